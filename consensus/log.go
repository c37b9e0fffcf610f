package consensus

import (
	"context"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// newRaftLogger returns an hclog.Logger for raft, its transport and its
// snapshot store that forwards every record at or above level to l, with
// the hclog logger name under the key "component".
//
// hclog's own output is discarded; the intercept sink does the forwarding.
// The base logger keeps the same level so that raft's IsDebug()-style guards
// agree with what the sink lets through.
func newRaftLogger(l *slog.Logger, level hclog.Level) hclog.Logger {
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{
		Name:   "raft",
		Level:  level,
		Output: io.Discard,
	})
	il.RegisterSink(slogSink{l: l, min: level})
	return il
}

// slogSink is an hclog.SinkAdapter writing to slog. Sinks receive records
// of every level, so it filters by min itself.
type slogSink struct {
	l   *slog.Logger
	min hclog.Level
}

func (s slogSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < s.min || level == hclog.Off {
		return
	}
	var sl slog.Level
	switch level {
	case hclog.Trace:
		sl = slog.LevelDebug - 4
	case hclog.Debug:
		sl = slog.LevelDebug
	case hclog.Info, hclog.NoLevel:
		sl = slog.LevelInfo
	case hclog.Warn:
		sl = slog.LevelWarn
	default:
		sl = slog.LevelError
	}
	s.l.Log(context.Background(), sl, msg, append([]any{"component", name}, args...)...)
}
