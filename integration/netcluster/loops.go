package netcluster

import (
	"context"
	"sync"
)

// loops owns a prober's goroutines: each runs until stop, which waits for
// all of them.
type loops struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newLoops() loops {
	ctx, cancel := context.WithCancel(context.Background())
	return loops{ctx: ctx, cancel: cancel}
}

// run starts f on its own goroutine with the loops' context.
func (l *loops) run(f func(ctx context.Context)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f(l.ctx)
	}()
}

// stop ends every goroutine and waits for them.
func (l *loops) stop() {
	l.cancel()
	l.wg.Wait()
}
