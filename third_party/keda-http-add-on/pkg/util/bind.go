package util

import (
	"net"
	"os"
	"strconv"
)

// ListenAddress is HOST:PORT for the servers of the interceptor and the scaler: HOST is
// KEDA_HTTP_BIND_ADDRESS, or 0.0.0.0 (upstream's fixed choice) when it is unset. A kubemaas patch:
// its testbed runs both as host processes that must listen on 127.0.0.1 only.
func ListenAddress(port int) string {
	host := os.Getenv("KEDA_HTTP_BIND_ADDRESS")
	if host == "" {
		host = "0.0.0.0"
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
