package v1alpha1

// Secret holds small confidential data of a project: cloud-init user data, sysprep answer
// files, registry credentials. It has the Kubernetes core/v1 shape (no spec or status) and is
// also accepted with apiVersion v1.
type Secret struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	// Type says what the data is for; default Opaque. It cannot change.
	Type SecretType `json:"type,omitempty"`
	// Data maps keys to values (base64 in JSON).
	Data map[string][]byte `json:"data,omitempty"`
	// StringData is a write-only convenience: its entries are merged into Data (winning over
	// Data's) when the Secret is written, and it is never stored.
	StringData map[string]string `json:"stringData,omitempty"`
	// Immutable, when true, forbids changing Data and Type (and turning it off again).
	Immutable *bool `json:"immutable,omitempty"`
}

// SecretType is the type of a Secret.
type SecretType string

// SecretType values.
const (
	SecretTypeOpaque           SecretType = "Opaque"
	SecretTypeDockerConfigJSON SecretType = "kubernetes.io/dockerconfigjson"
	// Deckhouse's provisioning types.
	SecretTypeCloudInit SecretType = "provisioning.virtualization.deckhouse.io/cloud-init"
	SecretTypeSysprep   SecretType = "provisioning.virtualization.deckhouse.io/sysprep"
	// The same under Rakhsh's group; they mean exactly the same.
	SecretTypeRakhshCloudInit SecretType = "provisioning.virtualization.rakhsh.io/cloud-init"
	SecretTypeRakhshSysprep   SecretType = "provisioning.virtualization.rakhsh.io/sysprep"
)

// IsCloudInit reports whether t is a cloud-init type under either group.
func (t SecretType) IsCloudInit() bool {
	return t == SecretTypeCloudInit || t == SecretTypeRakhshCloudInit
}

// IsSysprep reports whether t is a sysprep type under either group.
func (t SecretType) IsSysprep() bool { return t == SecretTypeSysprep || t == SecretTypeRakhshSysprep }

// Well-known Secret keys.
const (
	// SecretKeyUserData holds cloud-init user data (Deckhouse's key).
	SecretKeyUserData = "userData"
	// SecretKeyUserDataLower is also accepted for cloud-init user data (KubeVirt's spelling).
	SecretKeyUserDataLower = "userdata"
	// SecretKeyAutounattend and SecretKeyUnattend are Windows answer files for sysprep.
	SecretKeyAutounattend = "autounattend.xml"
	SecretKeyUnattend     = "unattend.xml"
	// SecretKeyDockerConfigJSON holds registry credentials in kubernetes.io/dockerconfigjson Secrets.
	SecretKeyDockerConfigJSON = ".dockerconfigjson"
)

// SecretMaxSize is the most data (keys and values) one Secret may hold.
const SecretMaxSize = 1 << 20
