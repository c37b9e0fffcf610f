package netns

import "errors"

// Close deletes every namespace the topology created, nodes first and the
// switch last, after killing processes still running inside them. The
// interfaces and the bridge live only inside those namespaces, so they go
// with them. Close works after a partial Build and may be called more than
// once.
func (t *Topology) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for i := len(t.namespaces) - 1; i >= 0; i-- {
		errs = append(errs, deleteNamespace(t.namespaces[i]))
	}
	return errors.Join(errs...)
}

// Cleanup is Close for callers that cannot handle its error, such as a
// deferred call in a demo program.
func (t *Topology) Cleanup() { _ = t.Close() }
