package v1alpha1

// ControlPlane is the read-only view of the control plane (cluster-scoped, one object named
// "cluster"): the `rakhsh serve` processes sharing the store, the one of them elected to run
// the controllers, and, on an etcd store, the etcd members and their health. It is not
// stored: every API server computes it on each read from the store's live registrations
// (lease-bound etcd keys) and from etcd itself, so any member answers the same. It cannot be
// created, changed, deleted or watched.
type ControlPlane struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Status ControlPlaneStatus `json:"status"`
}

// ControlPlaneName is the name of the one ControlPlane object.
const ControlPlaneName = "cluster"

// HeaderLeaderFence is the request header with which the controllers of the elected serve
// process send their leadership term (TERM@ELECTION-KEY). The API server accepts it only
// from admin (the process's own unix socket) and makes every store write of the request
// conditional on the term: once it has ended, the write fails with 409 reason LeaderFenced.
const HeaderLeaderFence = "Rakhsh-Leader-Fence"

// ControlPlaneStatus is what the control plane looks like now.
type ControlPlaneStatus struct {
	// Store is the object store: "bolt" (one serve process, always the leader, no election)
	// or "etcd" (several serve processes elect a leader).
	Store string `json:"store"`
	// LeaseTTLSeconds is the election lease of the answering server (--leader-lease-ttl): a
	// dead or cut-off leader's lease ends this long after its last renewal, and another
	// member takes over then. 0 on bolt.
	LeaseTTLSeconds int64 `json:"leaseTTLSeconds,omitempty"`
	// Leader is the member that runs the controllers; nil while none is elected (a takeover
	// in progress).
	Leader *ControlPlaneLeader `json:"leader,omitempty"`
	// Members are the serve processes registered now, oldest first. A member's registration
	// is bound to its lease: a process that dies or loses etcd drops out within the lease TTL.
	Members []ControlPlaneMember `json:"members,omitempty"`
	// Etcd lists the etcd cluster's members with their health; empty on bolt.
	Etcd []EtcdMember `json:"etcd,omitempty"`
	// EtcdError says why the etcd members could not be listed (the answering server's etcd
	// is unreachable, say).
	EtcdError string `json:"etcdError,omitempty"`
}

// ControlPlaneLeader is the elected member.
type ControlPlaneLeader struct {
	// Name is the leader's member name.
	Name string `json:"name"`
	// Term is the leader's election term: the etcd revision that created its election key.
	// Terms only grow; every write of the leader's controllers is fenced by it, so once a
	// newer term exists the older leader's writes are refused (reason LeaderFenced). 0 on
	// bolt.
	Term int64 `json:"term,omitempty"`
	// Since is when it became the leader.
	Since *Time `json:"since,omitempty"`
}

// ControlPlaneMember is one `rakhsh serve` process of the control plane.
type ControlPlaneMember struct {
	// Name is the member's name (serve's --node-name, default the hostname). Two members
	// may share a name; each has its own registration.
	Name string `json:"name"`
	// APIAddress is where the member serves the API over TCP (https://host:port, from
	// --listen), or its unix socket when it has no --listen.
	APIAddress string `json:"apiAddress"`
	// Version is the member's Rakhsh version.
	Version string `json:"version"`
	// Since is when the member registered (its process started, or it regained etcd).
	Since *Time `json:"since,omitempty"`
	// Leader is true for the member that runs the controllers.
	Leader bool `json:"leader,omitempty"`
	// Controllers is false for a member started with --no-controllers: it serves the API
	// and never campaigns.
	Controllers bool `json:"controllers"`
	// Agent is true when the member runs a node agent in its process (no --no-agent).
	Agent bool `json:"agent"`
}

// EtcdMember is one member of the etcd cluster, as etcd reports it.
type EtcdMember struct {
	// Name is the etcd member's --name.
	Name string `json:"name"`
	// ID is its member ID (hex).
	ID string `json:"id"`
	// ClientURLs are its advertised client URLs.
	ClientURLs []string `json:"clientURLs,omitempty"`
	// Healthy is true when it answered a status request within two seconds.
	Healthy bool `json:"healthy"`
	// RaftLeader is true for etcd's own (raft) leader.
	RaftLeader bool `json:"raftLeader,omitempty"`
	// Version is its etcd server version.
	Version string `json:"version,omitempty"`
	// DBSize is the size of its database file, in bytes.
	DBSize int64 `json:"dbSize,omitempty"`
	// Error says why it is not healthy.
	Error string `json:"error,omitempty"`
}
