package itest

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/localcluster"
)

// Ack is one acknowledged insert.
type Ack struct {
	ID   int64
	At   time.Time
	Node string // the primary that acknowledged it
}

// Writer inserts a numbered row every Interval into whichever node answers
// GET /primary with 200, and records every acknowledgement. Each attempt uses
// a new id, so an insert whose outcome was unknown is simply not counted.
type Writer struct {
	lc       *localcluster.Cluster
	table    string
	interval time.Duration

	mu     sync.Mutex
	acks   []Ack
	errors int

	cancel context.CancelFunc
	done   chan struct{}
}

// StartWriter creates the table on the current primary and starts writing.
func StartWriter(lc *localcluster.Cluster, table string, interval time.Duration) (*Writer, error) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{lc: lc, table: table, interval: interval, cancel: cancel, done: make(chan struct{})}
	conn, node, err := w.connectPrimary(ctx)
	for deadline := time.Now().Add(15 * time.Second); err != nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		conn, node, err = w.connectPrimary(ctx)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, node text, at timestamptz DEFAULT now())", pgx.Identifier{table}.Sanitize())); err != nil {
		conn.Close(ctx)
		cancel()
		return nil, fmt.Errorf("create %s on %s: %w", table, node, err)
	}
	go w.run(ctx, conn, node)
	return w, nil
}

func (w *Writer) run(ctx context.Context, conn *pgx.Conn, node string) {
	defer close(w.done)
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(w.interval)
	defer t.Stop()
	insert := fmt.Sprintf("INSERT INTO %s (id, node) VALUES ($1, $2)", pgx.Identifier{w.table}.Sanitize())
	var id int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			var err error
			if conn, node, err = w.connectPrimary(ctx); err != nil {
				w.fail()
				continue
			}
		}
		id++
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := conn.Exec(ictx, insert, id, node)
		cancel()
		if err != nil {
			w.fail()
			conn.Close(context.Background())
			conn = nil
			continue
		}
		w.mu.Lock()
		w.acks = append(w.acks, Ack{ID: id, At: time.Now(), Node: node})
		w.mu.Unlock()
	}
}

func (w *Writer) fail() {
	w.mu.Lock()
	w.errors++
	w.mu.Unlock()
}

// connectPrimary finds the node whose agent answers GET /primary with 200.
func (w *Writer) connectPrimary(ctx context.Context) (*pgx.Conn, string, error) {
	client := &http.Client{Timeout: 300 * time.Millisecond}
	for _, n := range w.lc.Nodes() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.APIURL+"/primary", nil)
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		conn, err := Dial(ctx, n.PGPort)
		if err != nil {
			continue
		}
		return conn, n.Name, nil
	}
	return nil, "", fmt.Errorf("no node answers /primary with 200")
}

// Stop stops writing and waits for the writer to finish.
func (w *Writer) Stop() {
	w.cancel()
	<-w.done
}

// Acks returns the acknowledgements so far.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack{}, w.acks...)
}

// Errors is the number of failed attempts.
func (w *Writer) Errors() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errors
}

// FirstAckAfter is the first acknowledgement after t (zero if none).
func (w *Writer) FirstAckAfter(t time.Time) (Ack, bool) {
	for _, a := range w.Acks() {
		if a.At.After(t) {
			return a, true
		}
	}
	return Ack{}, false
}

// LastAckBefore is the last acknowledgement before t.
func (w *Writer) LastAckBefore(t time.Time) (Ack, bool) {
	acks := w.Acks()
	for i := len(acks) - 1; i >= 0; i-- {
		if acks[i].At.Before(t) {
			return acks[i], true
		}
	}
	return Ack{}, false
}

// Missing returns the acknowledged ids that are not in the table on port.
func (w *Writer) Missing(ctx context.Context, port int) ([]int64, error) {
	// Acknowledgements first: the writer may still be running, and a row
	// acknowledged after the SELECT below is not missing.
	acks := w.Acks()
	conn, err := Dial(ctx, port)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT id FROM %s", pgx.Identifier{w.table}.Sanitize()))
	if err != nil {
		return nil, err
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var missing []int64
	for _, a := range acks {
		if !have[a.ID] {
			missing = append(missing, a.ID)
		}
	}
	return missing, nil
}
