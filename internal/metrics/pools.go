package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector turns a Source into metrics at scrape time.
type poolCollector struct {
	src     Source
	log     *slog.Logger
	timeout time.Duration

	volumes, snapshots          *prometheus.Desc
	capacity, available         *prometheus.Desc
	enforced                    *prometheus.Desc
	orphansFound, orphansRemove *prometheus.Desc
	missingData                 *prometheus.Desc
}

func newPoolCollector(src Source, log *slog.Logger, timeout time.Duration) *poolCollector {
	poolLabels := []string{"pool", "type"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
	}
	return &poolCollector{
		src: src, log: log, timeout: timeout,
		volumes:   desc("pool_volumes", "Volumes the metadata store records in the pool.", poolLabels),
		snapshots: desc("pool_snapshots", "Snapshots the metadata store records in the pool.", poolLabels),
		capacity:  desc("pool_capacity_bytes", "Total size of the filesystem (or quota) holding the pool.", poolLabels),
		available: desc("pool_available_bytes", "Bytes the pool can still give to new volumes.", poolLabels),
		enforced: desc("pool_capacity_enforced",
			"1 when the pool enforces volume sizes as hard limits (quota, qgroup, image size), 0 when a volume can outgrow its capacity.", poolLabels),
		orphansFound: desc("reconcile_orphans_found_total",
			"Entries found on disk that the metadata store did not know (staged leftovers, unknown IDs), summed over reconciles.", []string{"pool"}),
		orphansRemove: desc("reconcile_orphans_removed_total",
			"Orphan entries reconcile removed; found minus removed failed and were logged.", []string{"pool"}),
		missingData: desc("reconcile_missing_data_records",
			"Store records with no data on disk at the last reconcile: volumes ControllerGetVolume reports abnormal.", []string{"pool"}),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.volumes, c.snapshots, c.capacity, c.available, c.enforced, c.orphansFound, c.orphansRemove, c.missingData} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. The Prometheus client gives
// Collect no context, so the read is bounded by the collector's own
// timeout.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	pools, err := c.src.Pools(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot read pools; pool metrics left out of this scrape", "err", err)
	} else {
		for _, p := range pools {
			labels := []string{p.Name, p.Type}
			if p.Counted {
				ch <- prometheus.MustNewConstMetric(c.volumes, prometheus.GaugeValue, float64(p.Volumes), labels...)
				ch <- prometheus.MustNewConstMetric(c.snapshots, prometheus.GaugeValue, float64(p.Snapshots), labels...)
			}
			if p.CapacityKnown {
				ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(p.TotalBytes), labels...)
				ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, float64(p.AvailableBytes), labels...)
				ch <- prometheus.MustNewConstMetric(c.enforced, prometheus.GaugeValue, boolFloat(p.Enforced), labels...)
			}
		}
	}
	for _, r := range c.src.Reconcile() {
		ch <- prometheus.MustNewConstMetric(c.orphansFound, prometheus.CounterValue, float64(r.OrphansFound), r.Pool)
		ch <- prometheus.MustNewConstMetric(c.orphansRemove, prometheus.CounterValue, float64(r.OrphansRemoved), r.Pool)
		ch <- prometheus.MustNewConstMetric(c.missingData, prometheus.GaugeValue, float64(r.MissingData), r.Pool)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
