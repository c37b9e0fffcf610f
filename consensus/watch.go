package consensus

import "sync"

// broadcaster fans a "something changed" signal out to any number of
// subscribers. Each subscriber has a channel with a buffer of one: notify
// never blocks, and signals a slow subscriber has not consumed yet coalesce
// into one. Safe for use from any goroutine.
type broadcaster struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

func (b *broadcaster) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	if b.subs == nil {
		b.subs = make(map[chan struct{}]struct{})
	}
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
		})
	}
}

func (b *broadcaster) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending
		}
	}
}

// leaderFanout delivers leadership transitions to any number of channels.
// Each channel has a buffer of one that always holds the latest value not yet
// received: a slow consumer skips intermediate values but never misses the
// last one. Publishing never blocks. Safe for use from any goroutine.
type leaderFanout struct {
	mu     sync.Mutex
	leader bool
	subs   []chan bool
}

// subscribe returns a new channel primed with the current value.
func (l *leaderFanout) subscribe() <-chan bool {
	ch := make(chan bool, 1)
	l.mu.Lock()
	ch <- l.leader
	l.subs = append(l.subs, ch)
	l.mu.Unlock()
	return ch
}

// publish records v and, if it differs from the last value, delivers it.
func (l *leaderFanout) publish(v bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v == l.leader {
		return
	}
	l.leader = v
	for _, ch := range l.subs {
		// Only publish sends, under mu, so after draining the stale value
		// the buffer has room.
		select {
		case ch <- v:
		default:
			select {
			case <-ch:
			default:
			}
			ch <- v
		}
	}
}
