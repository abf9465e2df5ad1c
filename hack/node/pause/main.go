// pause: the process that holds a pod's namespaces open (the kubelet's "sandbox"
// container). Kubernetes' own pause image cannot be pulled here (no registry is
// reachable), so the real node builds this one: it does what registry.k8s.io/pause
// does — sleep until SIGINT/SIGTERM, and reap the zombies of a shared PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("kubemaas pause 1\n")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
