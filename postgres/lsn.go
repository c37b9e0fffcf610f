package postgres

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a WAL position (a byte offset into the write-ahead log). Its text
// form is PostgreSQL's "X/Y" (two hexadecimal halves of the 64-bit value),
// and it marshals to JSON as that string.
type LSN uint64

// ParseLSN parses PostgreSQL's "X/Y" form, for example "0/3000060".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("parse LSN %q: want the form X/Y with 1 to 8 hex digits each", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN the way PostgreSQL does ("0/3000060").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF)
}

// MarshalText implements encoding.TextMarshaler (JSON uses it: "0/3000060").
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// parseNullLSN turns a nullable pg_lsn::text column into an LSN (0 for NULL).
func parseNullLSN(s *string) (LSN, error) {
	if s == nil || *s == "" {
		return 0, nil
	}
	return ParseLSN(*s)
}
