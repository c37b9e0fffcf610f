// Package consensus is pgha's embedded Raft member and the replicated state
// machine of the cluster state.
//
// A Node runs hashicorp/raft with a raft-boltdb log and stable store (one
// file, Dir/raft.db), file snapshots (Dir/snapshots, two retained) and a TCP
// transport, mutual TLS when Config.ServerTLS and ClientTLS are set (see
// tls.go). Its FSM holds State: cluster identity, members, the primary and
// its epoch, the synchronous standby set and the pause flag. State changes
// only through typed, versioned Commands committed with Node.Apply on the
// leader; every agent reads its own replica with Node.State.
//
// # Bootstrapping: exactly once
//
// A cluster bootstraps exactly once, and these rules keep it that way:
//
//  1. A node that has Raft state on disk (HasState) never bootstraps: it was
//     part of a cluster and rejoins it by starting up. Bootstrap refuses with
//     ErrAlreadyBootstrapped.
//  2. Every initial member may call Bootstrap with the identical server list
//     (same IDs and addresses; Bootstrap sorts it, so order does not matter). hashicorp/raft
//     makes that safe: the members all start from the same configuration at
//     index 1, so whichever is elected first, they agree. A member that a
//     leader has already reached has state and gets ErrAlreadyBootstrapped,
//     which on startup is the expected answer, not a failure.
//  3. Never bootstrap with different lists, or a list of one on several nodes:
//     that creates separate clusters that can each elect a leader.
//  4. A node added later never bootstraps. It starts with Open only, and the
//     leader adds it with AddVoter; the leader then replicates the log or a
//     snapshot to it.
//
// # Commands and the FSM
//
// The FSM is a command table (see fsm.go): one entry per CommandType with the
// payload versions it decodes and one apply function. Apply on an unknown
// type or version, or on a payload that does not decode, returns an error
// wrapping ErrUnknownCommand; a failed precondition returns one wrapping
// ErrRefused. Either way the state is untouched, on every replica alike, and
// Node.Apply returns that error to its caller. Nothing panics and nothing is
// silently ignored.
//
// # Concurrency
//
// Raft calls the FSM's Apply, Snapshot and Restore on its one FSM goroutine;
// they are the only writers of the replica and publish each new State under a
// write lock. Snapshot persistence runs concurrently on a deep copy. Every
// reader (Node.State) gets a deep copy under a read lock. All Node methods are
// safe for concurrent use. Watch and LeaderCh never block raft: their
// channels are buffered and coalescing.
package consensus
