package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// TestGroupCommit holds one commit in flight while writers queue behind it,
// then checks that the queued writers shared one transaction and that a
// failing or panicking writer among them costs the others nothing.
func TestGroupCommit(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		bad     func(tx *Tx) error // one queued writer does this; nil: none
		wantErr error
		wantTxs int // transactions the queued writers' changes landed in
	}{
		{"all succeed", nil, nil, 1},
		{"one fails", func(*Tx) error { return boom }, boom, 1},
		{"one panics", func(*Tx) error { panic("bug") }, nil, 1},
		{"one takes a name another holds", func(tx *Tx) error { return tx.PutVolume(vol("vol-00000000000000ff", "first")) }, errdefs.ErrAlreadyExists, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			ctx := context.Background()
			// The writer in flight blocks until every other writer has queued.
			hold, held := make(chan struct{}), make(chan struct{})
			var first sync.Once
			go s.Update(ctx, func(tx *Tx) error {
				first.Do(func() { close(held); <-hold })
				return tx.PutVolume(vol("vol-0000000000000000", "first"))
			})
			<-held
			const queued = 8
			var wg sync.WaitGroup
			var mu sync.Mutex
			txs := map[int]bool{}
			errs := make([]error, queued)
			for i := range queued {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = s.Update(ctx, func(tx *Tx) error {
						if i == 0 && tc.bad != nil {
							return tc.bad(tx)
						}
						mu.Lock()
						txs[tx.tx.ID()] = true
						mu.Unlock()
						return tx.PutVolume(vol(fmt.Sprintf("vol-%016x", i+1), fmt.Sprintf("v%d", i+1)))
					})
				}()
			}
			waitQueued(t, s, queued)
			close(hold)
			wg.Wait()
			for i, err := range errs {
				switch {
				case i == 0 && tc.bad != nil:
					if tc.wantErr != nil && !errors.Is(err, tc.wantErr) || err == nil {
						t.Errorf("bad writer: err = %v, want %v", err, tc.wantErr)
					}
				case err != nil:
					t.Errorf("writer %d: %v", i, err)
				}
			}
			// A failure makes the good writers run again, in a second
			// transaction: what counts is the one that committed.
			var n int
			s.View(ctx, func(tx *Tx) error {
				vols, _, _ := tx.Volumes("", 0)
				n = len(vols)
				return nil
			})
			want := queued + 1
			if tc.bad != nil {
				want--
			}
			if n != want {
				t.Errorf("%d volumes stored, want %d", n, want)
			}
			if tc.bad == nil && len(txs) != tc.wantTxs {
				t.Errorf("queued writers ran in %d transactions, want %d", len(txs), tc.wantTxs)
			}
		})
	}
}

// waitQueued waits until n writers are queued behind the commit in flight.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	for {
		s.group.mu.Lock()
		q := len(s.group.pending)
		s.group.mu.Unlock()
		if q >= n {
			return
		}
		runtimeGosched()
	}
}

func runtimeGosched() { runtime.Gosched() }
