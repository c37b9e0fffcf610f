package consensus

import "errors"

var (
	// ErrNotLeader is returned by calls that only the Raft leader can serve.
	// The wrapping error names the leader if one is known; Node.Leader
	// returns it too. Nothing was written: the caller may retry on the leader.
	ErrNotLeader = errors.New("not the raft leader")

	// ErrRefused is wrapped by the error of a command whose precondition
	// failed when it was applied (stale epoch, second InitCluster, ...). The
	// command is in the Raft log but changed nothing, on every replica.
	ErrRefused = errors.New("command refused")

	// ErrAlreadyBootstrapped is returned by Bootstrap on a node that already
	// has Raft state (it bootstrapped before, or a leader already reached it).
	// On startup it is the expected answer for every restart: not a failure.
	ErrAlreadyBootstrapped = errors.New("raft state exists: already bootstrapped")

	// ErrUnknownCommand is wrapped by the error for a command this build
	// cannot decode: unknown type, unknown version, malformed payload.
	ErrUnknownCommand = errors.New("unknown command")
)
