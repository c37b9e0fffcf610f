package router

import (
	"encoding/binary"
	"io"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// msgReader sits between a socket and pgproto3's Backend or Frontend. It
// buffers what the socket gives, but hands the pgproto3 reader at most the
// rest of the current message. So after Receive returns, every byte not
// yet decoded is here, not hidden in pgproto3's buffer: the fast path
// (fast.go) can see that a session has nothing pending, read the socket
// into this buffer itself, and hand back what it did not serve.
type msgReader struct {
	src    io.Reader
	buf    []byte
	r, w   int
	pooled bool // buf comes from clientBufs: given back while empty (releaseIfEmpty) and fetched again when needed

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

// newClientReader is newMsgReader with a recycled buffer, fetched when the
// first read needs it and given back whenever the session has nothing
// buffered (releaseIfEmpty) and when it ends (release): ten thousand idle
// clients hold no buffer.
func newClientReader(src io.Reader) *msgReader {
	return &msgReader{src: src, pooled: true}
}

// ensureBuf fetches a pooled reader's buffer if it gave it back.
func (m *msgReader) ensureBuf() {
	if m.buf == nil && m.pooled {
		m.buf = clientBufs.Get().(*[msgReaderSize]byte)[:]
	}
}

// releaseIfEmpty gives a pooled reader's buffer back when nothing is
// buffered in it; the next read fetches one again.
func (m *msgReader) releaseIfEmpty() {
	if m.pooled && m.buf != nil && m.r == m.w {
		clientBufs.Put((*[msgReaderSize]byte)(m.buf))
		m.buf, m.r, m.w = nil, 0, 0
	}
}

// release gives back a pooled reader's buffer; m must not be used after.
func (m *msgReader) release() {
	if m.pooled && m.buf != nil {
		clientBufs.Put((*[msgReaderSize]byte)(m.buf))
	}
	m.buf, m.r, m.w, m.pooled = nil, 0, 0, false
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
		m.ensureBuf()
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
	m.ensureBuf()
	if m.r > 0 {
		m.w = copy(m.buf, m.buf[m.r:m.w])
		m.r = 0
	}
	return m.buf[m.w:]
}

func (m *msgReader) fill(n int) { m.w += n }

// preload buffers b, read from the socket before m existed (at most a
// startup packet's worth, well within the buffer).
func (m *msgReader) preload(b []byte) {
	if len(b) > 0 {
		m.fill(copy(m.spare(), b))
	}
}

// A decoder is a pgproto3 Backend reading from a msgReader, recycled
// between sessions and between a session's stays on the fast path: each
// Backend keeps an 8 kB read buffer of its own, and a session the fast
// path holds needs none. It is given back only after a whole message
// (msgReader never hands it more than the current one), so its buffer is
// empty and nothing of one session reaches the next.
type decoder struct {
	be  *pgproto3.Backend
	src decoderSource
}

// decoderSource is the msgReader a recycled Backend reads from.
type decoderSource struct{ mr *msgReader }

func (s *decoderSource) Read(p []byte) (int, error) { return s.mr.Read(p) }

var decoders = sync.Pool{New: func() any {
	d := &decoder{}
	// The router writes to clients itself (client.send), never through
	// the Backend.
	d.be = pgproto3.NewBackend(&d.src, io.Discard)
	return d
}}

// getDecoder is a Backend reading mr, refusing message bodies over
// maxBody bytes.
func getDecoder(mr *msgReader, maxBody int) *decoder {
	d := decoders.Get().(*decoder)
	d.src.mr = mr
	d.be.SetMaxBodyLen(maxBody)
	d.be.SetAuthType(pgproto3.AuthTypeOk) // no password message expected
	return d
}

// put gives d back; only at a message boundary.
func (d *decoder) put() {
	d.src.mr = nil
	decoders.Put(d)
}
