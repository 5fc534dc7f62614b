// Package qmp is a client for the QEMU Machine Protocol (QMP), the JSON
// protocol QEMU speaks on a monitor socket (-qmp unix:PATH,server=on,wait=off).
//
// # Protocol
//
// The server sends one JSON object per line (QEMU terminates lines with
// "\r\n"). On connect it sends a greeting,
//
//	{"QMP": {"version": {"qemu": {...}, "package": "..."}, "capabilities": ["oob"]}}
//
// and accepts nothing but qmp_capabilities until capabilities are negotiated.
// After that the client sends commands,
//
//	{"execute": "query-status", "arguments": {...}, "id": 7}
//
// and the server answers each with either {"return": ..., "id": 7} or
// {"error": {"class": "...", "desc": "..."}, "id": 7}. Asynchronous events
// ({"event": "STOP", "data": {...}, "timestamp": {"seconds": S, "microseconds": U}})
// are interleaved with replies at any point; QEMU 7.2 emits the event caused by
// a command (RESUME for cont, SHUTDOWN for quit, ...) before that command's
// reply. Out-of-band execution ("oob") is never enabled by this package, so
// QEMU runs commands one at a time in the order it receives them.
//
// # Concurrency
//
// A [Conn] is safe for concurrent use. Every command carries a unique numeric
// id and its reply is routed back to the caller by that id, so any number of
// goroutines may call [Conn.Execute] at once. A caller whose context ends
// stops waiting; the command may still run inside QEMU and its late reply is
// discarded without disturbing other callers.
//
// # Events
//
// [Conn.Subscribe] returns a channel of [Event]s. Each subscriber has its own
// unbounded queue between the connection's reader and its channel, so a slow
// subscriber never blocks the reader, other subscribers or command replies,
// and no event is ever dropped; the price is memory while a subscriber lags
// (a warning is logged when a queue grows large). Events are not replayed:
// subscribe before issuing the commands whose events matter. An event QEMU
// sent before a command's reply is already queued to every subscriber when
// that command's Execute returns (so after Cont returns, RESUME is at most a
// channel receive away). When the connection ends,
// for any reason, every subscriber receives a final synthetic event named
// [EventDisconnected] and then its channel is closed.
//
// # File descriptors
//
// [Conn.ExecuteWithFiles] sends file descriptors with SCM_RIGHTS in the same
// sendmsg(2) as the command bytes, which is what QEMU's getfd and add-fd
// expect. Such commands are serialized with each other, so QEMU can never
// attach one command's descriptors to another command.
package qmp
