package router

import (
	"encoding/binary"
	"io"
	"sync"
)

// msgReader sits between a socket and pgproto3's Backend or Frontend. It
// buffers what the socket gives, but hands the pgproto3 reader at most the
// rest of the current message. So after Receive returns, every byte not
// yet decoded is here, not hidden in pgproto3's buffer: the fast path
// (fast.go) can see that a session has nothing pending, read the socket
// into this buffer itself, and hand back what it did not serve.
type msgReader struct {
	src  io.Reader
	buf  []byte
	r, w int

	hdr  [5]byte
	hpos int // header bytes of the current message passed on (0: at a boundary)
	body int // body bytes of the current message still to pass on, once hpos is 5
}

const msgReaderSize = 32 << 10

func newMsgReader(src io.Reader) *msgReader {
	return &msgReader{src: src, buf: make([]byte, msgReaderSize)}
}

// clientBufs recycles the buffers of client sessions' readers: a
// connection per transaction (pgbench -C, PHP) would otherwise allocate
// and zero 32 kB per login.
var clientBufs = sync.Pool{New: func() any { return new([msgReaderSize]byte) }}

// newClientReader is newMsgReader with a recycled buffer; release gives it
// back once nothing reads the session any more.
func newClientReader(src io.Reader) *msgReader {
	return &msgReader{src: src, buf: clientBufs.Get().(*[msgReaderSize]byte)[:]}
}

// release returns a newClientReader's buffer; m must not be used after.
func (m *msgReader) release() {
	if len(m.buf) == msgReaderSize {
		clientBufs.Put((*[msgReaderSize]byte)(m.buf))
	}
	m.buf, m.r, m.w = nil, 0, 0
}

// Read implements io.Reader for pgproto3.
func (m *msgReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if m.r == m.w {
		if m.hpos == 5 && m.body >= 4096 && len(p) >= 4096 {
			// A large body: straight from the socket, no copy here.
			n, err := m.src.Read(p[:min(len(p), m.body)])
			m.passed(n)
			return n, err
		}
		m.r, m.w = 0, 0
		n, err := m.src.Read(m.buf)
		m.w = n
		if n == 0 {
			return 0, err
		}
	}
	avail := m.buf[m.r:m.w]
	var n int
	if m.hpos < 5 {
		n = copy(p, avail[:min(len(avail), 5-m.hpos)])
		copy(m.hdr[m.hpos:], avail[:n])
	} else {
		n = copy(p, avail[:min(len(avail), m.body)])
	}
	m.r += n
	m.passed(n)
	return n, nil
}

// passed advances the framing by n bytes handed on.
func (m *msgReader) passed(n int) {
	if m.hpos < 5 {
		m.hpos += n
		if m.hpos == 5 {
			// An invalid length (under 4) ends the message here: pgproto3
			// refuses it and the session ends.
			m.body = max(int(binary.BigEndian.Uint32(m.hdr[1:5]))-4, 0)
			if m.body == 0 {
				m.hpos = 0
			}
		}
		return
	}
	m.body -= n
	if m.body == 0 {
		m.hpos = 0
	}
}

// atBoundary: no message is partly passed on.
func (m *msgReader) atBoundary() bool { return m.hpos == 0 }

// buffered is the number of bytes read from the socket and not passed on.
func (m *msgReader) buffered() int { return m.w - m.r }

// peek returns the buffered bytes; valid until the next fill.
func (m *msgReader) peek() []byte { return m.buf[m.r:m.w] }

// consume drops n buffered bytes that the fast path served itself; only
// whole messages, so the framing stays at a boundary.
func (m *msgReader) consume(n int) {
	m.r += n
	if m.r == m.w {
		m.r, m.w = 0, 0
	}
}

// spare returns the free room after the buffered bytes, moving them to
// the front first; the caller reads into it and calls fill.
func (m *msgReader) spare() []byte {
	if m.r > 0 {
		m.w = copy(m.buf, m.buf[m.r:m.w])
		m.r = 0
	}
	return m.buf[m.w:]
}

func (m *msgReader) fill(n int) { m.w += n }
