package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// progressDelay keeps short phases quiet: a bar appears only once a phase
// has run this long, so fast phases never flicker one onto the screen.
const progressDelay = 500 * time.Millisecond

// progress draws a one-line bar for a phase with a known amount of work.
// A nil progress (no terminal) does nothing.
type progress struct {
	w      io.Writer
	label  string
	bytes  bool // count bytes, shown in MiB
	total  int64
	done   atomic.Int64
	start  time.Time
	stop   chan struct{}
	wg     sync.WaitGroup
	drawn  bool
	finish sync.Once
}

// startProgress starts a bar on w, or returns nil when w is nil. With
// bytes, the counts are bytes and shown in MiB.
func startProgress(w io.Writer, label string, total int64, bytes bool) *progress {
	if w == nil || total <= 0 {
		return nil
	}
	p := &progress{w: w, label: label, bytes: bytes, total: total, start: time.Now(), stop: make(chan struct{})}
	p.wg.Add(1)
	go p.loop()
	return p
}

func (p *progress) add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

func (p *progress) loop() {
	defer p.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			if elapsed := now.Sub(p.start); elapsed >= progressDelay {
				fmt.Fprint(p.w, "\r"+renderBar(p.label, p.done.Load(), p.total, p.bytes, elapsed, 30)+"\x1b[K")
				p.drawn = true
			}
		}
	}
}

// end stops the bar and erases its line.
func (p *progress) end() {
	if p == nil {
		return
	}
	p.finish.Do(func() {
		close(p.stop)
		p.wg.Wait()
		if p.drawn {
			fmt.Fprint(p.w, "\r\x1b[K")
		}
	})
}

// renderBar draws "label [=====>    ] 42/100 3.2s" with a bar of width
// cells; with bytes, the counts are shown in MiB.
func renderBar(label string, done, total int64, bytes bool, elapsed time.Duration, width int) string {
	done = min(max(done, 0), total)
	filled := int(int64(width) * done / total)
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	count := fmt.Sprintf("%d/%d", done, total)
	if bytes {
		count = fmt.Sprintf("%d/%d MiB", done>>20, total>>20)
	}
	return fmt.Sprintf("%s [%s] %s %.1fs", label, bar, count, elapsed.Seconds())
}
