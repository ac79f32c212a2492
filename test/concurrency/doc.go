// Package concurrency hammers the real cairn binary from many gRPC clients
// at once: overlapping names and IDs must give exactly one volume per name,
// ABORTED (never a wrong answer) to the losers of a race, no deadlock, and
// a state that converges; BenchmarkCreateDeleteParallel shows throughput
// rising with concurrency, which a global lock would prevent.
package concurrency
