package bench

import (
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"
)

// Latency summarises a phase's call latencies, in seconds.
type Latency struct {
	Min  float64 `json:"minSeconds"`
	Mean float64 `json:"meanSeconds"`
	P50  float64 `json:"p50Seconds"`
	P90  float64 `json:"p90Seconds"`
	P99  float64 `json:"p99Seconds"`
	Max  float64 `json:"maxSeconds"`
}

// summarize computes Latency over samples. Percentiles are nearest-rank:
// the smallest sample with at least p of the samples at or below it, so
// every figure is a latency that was actually observed.
func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Latency{
		Min:  s[0].Seconds(),
		Mean: (sum / time.Duration(len(s))).Seconds(),
		P50:  percentile(s, 0.50).Seconds(),
		P90:  percentile(s, 0.90).Seconds(),
		P99:  percentile(s, 0.99).Seconds(),
		Max:  s[len(s)-1].Seconds(),
	}
}

// percentile is the nearest-rank percentile p (0 < p <= 1) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[min(rank, len(sorted))-1]
}

// sampler collects one phase's outcomes from concurrent callers.
type sampler struct {
	mu       sync.Mutex
	ok       []time.Duration
	errors   int
	firstErr string
}

// add records one call. Only successful calls count towards latency: a
// call refused at once would otherwise pull the percentiles down.
func (s *sampler) add(d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errors++
		if s.firstErr == "" {
			s.firstErr = errString(err)
		}
		return
	}
	s.ok = append(s.ok, d)
}

// phase turns the samples into a Phase; elapsed is the phase's wall time,
// from which throughput is computed.
func (s *sampler) phase(name string, concurrency int, elapsed time.Duration) Phase {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := Phase{
		Name:         name,
		Ops:          len(s.ok),
		Errors:       s.errors,
		Concurrency:  concurrency,
		TotalSeconds: elapsed.Seconds(),
		Latency:      summarize(s.ok),
		FirstError:   s.firstErr,
	}
	if elapsed > 0 {
		p.OpsPerSecond = float64(len(s.ok)) / elapsed.Seconds()
	}
	return p
}

// empty reports whether nothing was recorded.
func (s *sampler) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ok) == 0 && s.errors == 0
}

// sum is the total latency of the successful calls.
func (s *sampler) sum() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t time.Duration
	for _, d := range s.ok {
		t += d
	}
	return t
}

// errString prints a gRPC error as "Code: message", as cairnctl does,
// keeping any context wrapped around it.
func errString(err error) string {
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &se) {
		return err.Error()
	}
	st := se.GRPCStatus()
	text := st.Code().String() + ": " + st.Message()
	full, inner := err.Error(), se.Error()
	if strings.HasSuffix(full, inner) {
		return full[:len(full)-len(inner)] + text
	}
	return text
}
