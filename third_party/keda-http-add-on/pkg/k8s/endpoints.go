package k8s

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"

	discov1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Endpoints represents a set of ready and not ready addresses
type Endpoints struct {
	ReadyAddresses    []string
	NotReadyAddresses []string
}

// GetEndpointsFunc is a type that represents a function that can
// fetch endpoints
type GetEndpointsFunc func(ctx context.Context, namespace, serviceName string) (Endpoints, error)

// EndpointsForService fetches the ready endpoints for a given service and returns them as a slice of URLs with the specified port
func EndpointsForService(ctx context.Context, ns, serviceName, servicePort string, endpointsFn GetEndpointsFunc) ([]url.URL, error) {
	endpoints, err := endpointsFn(ctx, ns, serviceName)
	if err != nil {
		return []url.URL{}, fmt.Errorf("pkg.k8s.EndpointsForService: %w", err)
	}
	ret := make([]url.URL, 0, len(endpoints.ReadyAddresses))
	for _, addr := range endpoints.ReadyAddresses {
		u := url.URL{
			Scheme: "http",
			Host:   net.JoinHostPort(addr, servicePort),
		}
		ret = append(ret, u)
	}
	return ret, nil
}

// EndpointsFuncForControllerClient returns a new GetEndpointsFunc that uses a controller-runtime client.Reader to fetch endpoints
func EndpointsFuncForControllerClient(cl client.Reader) GetEndpointsFunc {
	return func(ctx context.Context, namespace, serviceName string) (Endpoints, error) {
		ess := &discov1.EndpointSliceList{}

		if err := cl.List(ctx, ess, client.InNamespace(namespace), client.MatchingLabels{discov1.LabelServiceName: serviceName}); err != nil {
			return Endpoints{}, err
		}
		return extractAddresses(ess.Items), nil
	}
}

// extractAddresses extracts ready and not ready addresses from the given list of EndpointSlice
func extractAddresses(eps []discov1.EndpointSlice) Endpoints {
	// addresses from EndpointSlices need to be deduplicated
	ready, notReady := make(map[string]bool), make(map[string]bool)
	for _, ep := range eps {
		for _, addr := range ep.Endpoints {
			// see also https://github.com/kubernetes/api/blob/v0.33.0/discovery/v1/types.go#L137-L144
			if addr.Conditions.Ready == nil || *addr.Conditions.Ready {
				for _, a := range addr.Addresses {
					ready[a] = true
				}
			} else {
				for _, a := range addr.Addresses {
					notReady[a] = true
				}
			}
		}
	}
	return Endpoints{
		ReadyAddresses:    slices.Collect(maps.Keys(ready)),
		NotReadyAddresses: slices.Collect(maps.Keys(notReady)),
	}
}

// StaticEndpointsFunc returns a GetEndpointsFunc that always answers the given ready addresses,
// whatever the service. A kubemaas patch: its testbed runs the interceptor as a host process on
// 127.0.0.1, an address no EndpointSlice may carry, so the scaler is told it directly
// (KEDA_HTTP_SCALER_TARGET_ADMIN_ADDRESSES, scaler/main.go).
func StaticEndpointsFunc(addresses []string) GetEndpointsFunc {
	return func(context.Context, string, string) (Endpoints, error) {
		return Endpoints{ReadyAddresses: slices.Clone(addresses)}, nil
	}
}
