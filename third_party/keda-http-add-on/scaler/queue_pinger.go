// This file contains the implementation for the HTTP request queue used by the
// KEDA external scaler implementation
package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/kedacore/http-add-on/pkg/k8s"
	"github.com/kedacore/http-add-on/pkg/queue"
	"github.com/kedacore/http-add-on/scaler/metrics"
)

type PingerStatus int32

const (
	PingerUNKNOWN PingerStatus = 0
	PingerACTIVE  PingerStatus = 1
	PingerERROR   PingerStatus = 2

	defaultWindow      = time.Minute
	defaultGranularity = time.Second
)

// aggregatedCount holds the scaler's computed view of a single
// route: concurrency summed across pods and the windowed request rate.
type aggregatedCount struct {
	Concurrency int
	RequestRate float64
}

// queuePinger has functionality to ping all interceptors
// behind a given `Service`, fetch their pending queue counts,
// and aggregate all of those counts together.
//
// It computes request rate from monotonic counters
// reported by interceptor pods, using a windowed ring buffer.
//
// Sample usage:
//
//	pinger := newQueuePinger(lggr, getEndpointsFn, ns, svcName, deplName, adminPort, instruments)
//	go pinger.start(ctx, ticker)
type queuePinger struct {
	getEndpointsFn         k8s.GetEndpointsFunc
	interceptorNS          string
	interceptorSvcName     string
	interceptorServiceName string
	adminPort              string
	pingMut                sync.RWMutex
	lastPingTime           time.Time
	allCounts              map[string]aggregatedCount
	lggr                   logr.Logger
	status                 PingerStatus
	instruments            *metrics.Instruments

	// prevPodCounts tracks the previous RequestCount per pod per key
	// so we can compute deltas between consecutive polls.
	prevPodCounts map[string]map[string]int64

	// cachedPodCounts stores the last successful response from each pod,
	// used to preserve concurrency for unreachable pods still in the
	// EndpointSlice. Entries are pruned when the pod leaves the
	// EndpointSlice.
	cachedPodCounts map[string]queue.Counts

	// rateBuckets holds per-key windowed ring buffers that accumulate
	// request deltas for rate computation.
	rateBuckets map[string]*queue.RequestsBuckets
}

func newQueuePinger(lggr logr.Logger, getEndpointsFn k8s.GetEndpointsFunc, ns, svcName, deplName, adminPort string, instruments *metrics.Instruments) *queuePinger {
	return &queuePinger{
		getEndpointsFn:         getEndpointsFn,
		interceptorNS:          ns,
		interceptorSvcName:     svcName,
		interceptorServiceName: deplName,
		adminPort:              adminPort,
		lggr:                   lggr,
		instruments:            instruments,
		allCounts:              map[string]aggregatedCount{},
		prevPodCounts:          map[string]map[string]int64{},
		cachedPodCounts:        map[string]queue.Counts{},
		rateBuckets:            map[string]*queue.RequestsBuckets{},
	}
}

// start starts the queuePinger
func (q *queuePinger) start(ctx context.Context, ticker *time.Ticker) error {
	lggr := q.lggr.WithName("scaler.queuePinger.start")
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			lggr.Error(ctx.Err(), "context marked done. stopping queuePinger loop")
			q.status = PingerERROR
			return fmt.Errorf("context marked done. stopping queuePinger loop: %w", ctx.Err())
		case <-ticker.C:
			err := q.fetchAndSaveCounts(ctx)
			if err != nil {
				lggr.Error(err, "getting request counts")
			}
		}
	}
}

func (q *queuePinger) counts() map[string]aggregatedCount {
	q.pingMut.RLock()
	defer q.pingMut.RUnlock()
	return maps.Clone(q.allCounts)
}

func (q *queuePinger) count(key string) aggregatedCount {
	q.pingMut.RLock()
	defer q.pingMut.RUnlock()
	return q.allCounts[key]
}

// UpdateBucketConfig sets the window and granularity for a key's rate
// ring buffer. If the config changes, the existing bucket is replaced.
func (q *queuePinger) UpdateBucketConfig(key string, window, granularity time.Duration) {
	q.pingMut.Lock()
	defer q.pingMut.Unlock()
	q.updateBucketConfigLocked(key, window, granularity)
}

func (q *queuePinger) updateBucketConfigLocked(key string, window, granularity time.Duration) {
	if window <= 0 {
		window = defaultWindow
	}
	if granularity <= 0 {
		granularity = defaultGranularity
	}
	if b, ok := q.rateBuckets[key]; ok &&
		b.Window() == window && b.Granularity() == granularity {
		return
	}
	q.rateBuckets[key] = queue.NewRequestsBuckets(window, granularity)
}

// ensureBucketLocked creates a default bucket for key if none exists.
// Must be called with pingMut held.
func (q *queuePinger) ensureBucketLocked(key string) *queue.RequestsBuckets {
	if b, ok := q.rateBuckets[key]; ok {
		return b
	}
	q.updateBucketConfigLocked(key, defaultWindow, defaultGranularity)
	return q.rateBuckets[key]
}

// fetchAndSaveCounts fetches raw counts from all interceptor pods,
// computes per-key request deltas, records them in the windowed
// ring buffers, and updates the aggregated allCounts map.
func (q *queuePinger) fetchAndSaveCounts(ctx context.Context) error {
	q.pingMut.Lock()
	defer q.pingMut.Unlock()

	fetchStart := time.Now()
	result, err := fetchCountsPerPod(ctx, q.lggr, q.getEndpointsFn, q.interceptorNS, q.interceptorSvcName, q.adminPort)
	failedPods := max(0, result.endpointCount-len(result.perPod))
	q.instruments.RecordFetch(time.Since(fetchStart), result.endpointCount, failedPods, err)
	if err != nil {
		q.lggr.Error(err, "getting request counts")
		q.status = PingerERROR
		return err
	}
	q.status = PingerACTIVE

	perPod := result.perPod

	now := time.Now()

	// Per-key aggregated concurrency and request-count delta.
	type keyAgg struct {
		concurrency int
		delta       int64
	}
	agg := make(map[string]keyAgg)

	for podKey, counts := range perPod {
		prev := q.prevPodCounts[podKey]
		newPrev := make(map[string]int64, len(counts))

		for key, c := range counts {
			newPrev[key] = c.RequestCount

			ha := agg[key]
			ha.concurrency += c.Concurrency

			if prev != nil {
				if old, ok := prev[key]; ok {
					delta := c.RequestCount - old
					if delta < 0 {
						// Counter reset (pod restarted); treat entire
						// current value as the delta.
						delta = c.RequestCount
					}
					ha.delta += delta
				}
				// New key on an existing pod: skip delta for this
				// tick to avoid a spike.
			}
			// New pod (prev == nil): skip delta for this tick.

			agg[key] = ha
		}
		q.prevPodCounts[podKey] = newPrev
		q.cachedPodCounts[podKey] = counts
	}

	// For unreachable pods still in the EndpointSlice, use cached
	// concurrency so that partial failures don't cause underreporting.
	// Only concurrency is replayed — request rate deltas are not
	// synthesised because we have no way to know what traffic the
	// unreachable pod handled. This is a deliberate trade-off:
	// concurrency is a point-in-time gauge (stale > zero), while
	// rate is a derivative that would be misleading if fabricated.
	for _, epKey := range result.endpointKeys {
		if _, reachable := perPod[epKey]; reachable {
			continue
		}
		if cached, ok := q.cachedPodCounts[epKey]; ok {
			q.lggr.V(1).Info("using cached counts for unreachable pod",
				"pod", epKey,
				"cachedHosts", len(cached),
			)
			for key, c := range cached {
				ha := agg[key]
				ha.concurrency += c.Concurrency
				agg[key] = ha
			}
		}
	}

	// Prune pods that have left the EndpointSlice entirely.
	endpointSet := make(map[string]struct{}, len(result.endpointKeys))
	for _, k := range result.endpointKeys {
		endpointSet[k] = struct{}{}
	}
	for podKey := range q.prevPodCounts {
		if _, ok := endpointSet[podKey]; !ok {
			delete(q.prevPodCounts, podKey)
		}
	}
	for podKey := range q.cachedPodCounts {
		if _, ok := endpointSet[podKey]; !ok {
			delete(q.cachedPodCounts, podKey)
		}
	}

	// Record deltas into ring buffers and compute rates.
	newCounts := make(map[string]aggregatedCount, len(agg))
	for key, ha := range agg {
		b := q.ensureBucketLocked(key)
		b.Record(now, int(ha.delta))
		newCounts[key] = aggregatedCount{
			Concurrency: ha.concurrency,
			RequestRate: b.WindowAverage(now),
		}
	}

	// Remove buckets for keys that disappeared.
	for key := range q.rateBuckets {
		if _, ok := agg[key]; !ok {
			delete(q.rateBuckets, key)
		}
	}

	q.allCounts = newCounts
	q.lastPingTime = now
	return nil
}

// fetchResult holds the outcome of a fetch cycle.
type fetchResult struct {
	perPod        map[string]queue.Counts
	endpointKeys  []string
	endpointCount int
}

// fetchCountsPerPod fetches counts from every interceptor pod endpoint
// and returns the raw per-pod results keyed by pod URL string along with
// the total number of endpoints that were polled.
//
// Individual pod failures are logged and skipped. An error is only
// returned when no pod could be reached at all, so that a single
// unreachable interceptor (e.g. during a rolling update or spot-node
// eviction) does not cause the scaler to report NOT_SERVING and get
// restarted by Kubernetes.
func fetchCountsPerPod(ctx context.Context, lggr logr.Logger, endpointsFn k8s.GetEndpointsFunc, ns, svcName, adminPort string) (fetchResult, error) {
	lggr = lggr.WithName("queuePinger.requestCounts")

	endpointURLs, err := k8s.EndpointsForService(ctx, ns, svcName, adminPort, endpointsFn)
	if err != nil {
		return fetchResult{}, err
	}

	if len(endpointURLs) == 0 {
		return fetchResult{}, fmt.Errorf("there isn't any valid interceptor endpoint")
	}

	endpointKeys := make([]string, len(endpointURLs))
	for i, u := range endpointURLs {
		endpointKeys[i] = podKey(u)
	}

	type podResult struct {
		key    string
		counts queue.Counts
	}

	resultCh := make(chan podResult, len(endpointURLs))
	var failCount atomic.Int32

	var wg sync.WaitGroup
	for _, endpoint := range endpointURLs {
		u := endpoint
		wg.Go(func() {
			counts, err := queue.GetCounts(http.DefaultClient, u)
			if err != nil {
				lggr.Error(err, "getting queue counts from interceptor", "interceptorAddress", u.String())
				failCount.Add(1)
				return
			}
			resultCh <- podResult{key: podKey(u), counts: counts}
		})
	}

	wg.Wait()
	close(resultCh)

	perPod := make(map[string]queue.Counts, len(endpointURLs))
	for r := range resultCh {
		perPod[r.key] = r.counts
	}

	if n := failCount.Load(); n > 0 {
		lggr.Info("some interceptor pods were unreachable",
			"failedPods", n,
			"totalPods", len(endpointURLs),
			"successPods", len(perPod),
		)
	}

	if len(perPod) == 0 {
		return fetchResult{endpointKeys: endpointKeys, endpointCount: len(endpointURLs)}, fmt.Errorf(
			"all %d interceptor pods were unreachable", len(endpointURLs),
		)
	}

	return fetchResult{perPod: perPod, endpointKeys: endpointKeys, endpointCount: len(endpointURLs)}, nil
}

func podKey(u url.URL) string {
	return u.Host
}
