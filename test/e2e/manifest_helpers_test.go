package e2e

import "strings"

// vmDoc is a VirtualMachine manifest made of the fields the tests vary; String renders it.
type vmDoc struct {
	API    string // apiVersion; virtualization.rakhsh.io/v1alpha1 when empty
	Name   string
	Class  string // virtualMachineClassName; left out when empty
	Policy string // runPolicy
	OSType string // osType; left out when empty
	Boot   string // bootloader; left out when empty
	CPU    string // the cpu map; "{cores: 1}" when empty
	Memory string // the memory map; a bare size such as "256Mi" stands for "{size: 256Mi}"
	Grace  string // terminationGracePeriodSeconds; left out when empty
	Node   string // nodeSelector map; left out when empty
	Refs   []string
	// Extra is more of the spec, as lines indented by two spaces and ending in a newline.
	Extra string
}

func (d vmDoc) String() string {
	var b strings.Builder
	api := d.API
	if api == "" {
		api = "virtualization.rakhsh.io/v1alpha1"
	}
	b.WriteString("apiVersion: " + api + "\nkind: VirtualMachine\nmetadata: {name: " + d.Name + "}\nspec:\n")
	if d.Class != "" {
		b.WriteString("  virtualMachineClassName: " + d.Class + "\n")
	}
	b.WriteString("  runPolicy: " + d.Policy + "\n")
	if d.OSType != "" {
		b.WriteString("  osType: " + d.OSType + "\n")
	}
	if d.Boot != "" {
		b.WriteString("  bootloader: " + d.Boot + "\n")
	}
	cpu := d.CPU
	if cpu == "" {
		cpu = "{cores: 1}"
	}
	b.WriteString("  cpu: " + cpu + "\n")
	mem := d.Memory
	if !strings.HasPrefix(mem, "{") {
		mem = "{size: " + mem + "}"
	}
	b.WriteString("  memory: " + mem + "\n")
	if d.Grace != "" {
		b.WriteString("  terminationGracePeriodSeconds: " + d.Grace + "\n")
	}
	if d.Node != "" {
		b.WriteString("  nodeSelector: " + d.Node + "\n")
	}
	if len(d.Refs) > 0 {
		b.WriteString("  blockDeviceRefs:\n")
		for _, r := range d.Refs {
			b.WriteString("  - " + r + "\n")
		}
	}
	b.WriteString(d.Extra)
	return b.String()
}

// vdRef is a blockDeviceRefs entry of a VirtualDisk; bootOrder, if given, is added to it.
func vdRef(name string, bootOrder ...string) string { return blockRef("VirtualDisk", name, bootOrder) }

// cviRef is a blockDeviceRefs entry of a ClusterVirtualImage; bootOrder, if given, is added.
func cviRef(name string, bootOrder ...string) string {
	return blockRef("ClusterVirtualImage", name, bootOrder)
}

func blockRef(kind, name string, bootOrder []string) string {
	if len(bootOrder) > 0 {
		return "{kind: " + kind + ", name: " + name + ", bootOrder: " + bootOrder[0] + "}"
	}
	return "{kind: " + kind + ", name: " + name + "}"
}

// hostSelector is a nodeSelector map of one host name.
func hostSelector(host string) string { return "{kubernetes.io/hostname: " + host + "}" }

// applyDocs applies the manifests docs, as one multi-document YAML, with `rakhsh apply -f -`.
func applyDocs(s *Serve, docs ...string) string {
	s.t.Helper()
	return s.MustCLI(strings.Join(docs, "---\n"), "apply", "-f", "-")
}

// indentLines puts prefix before every line of text and ends it in a newline.
func indentLines(text, prefix string) string {
	return prefix + strings.ReplaceAll(text, "\n", "\n"+prefix) + "\n"
}

// isoVM is a VM of 256Mi, started at once, that boots the test guest's ISO (the
// ClusterVirtualImage guest-iso), on the hosts of the nodeSelector map node (any if empty).
func isoVM(name, node string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Memory: "256Mi", Grace: "10", Node: node,
		Refs: []string{cviRef("guest-iso")}}.String()
}

// isoBootVM is a VM of 256Mi, started at once, with the disk disk that boots the test
// guest's ISO (the ClusterVirtualImage guest-iso, first in the boot order).
func isoBootVM(name, disk string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Memory: "256Mi", Grace: "30",
		Refs: []string{vdRef(disk, "2"), cviRef("guest-iso", "1")}}.String()
}

// classDoc is a VirtualMachineClass of the Deckhouse API with the CPU model model and the
// sizing policies, each given as its YAML lines ("cores: {min: 1, max: 2}\ncoreFractions: [10]").
func classDoc(name, model string, policies ...string) string {
	m := "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualMachineClass\nmetadata: {name: " + name + "}\nspec:\n" +
		"  cpu: {type: Model, model: " + model + "}\n  sizingPolicies:\n"
	for _, p := range policies {
		m += "  - " + strings.ReplaceAll(p, "\n", "\n    ") + "\n"
	}
	return m
}

// cviDoc is a ClusterVirtualImage whose spec.dataSource is the YAML lines of source.
func cviDoc(name, source string) string {
	return "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: " + name + "}\nspec:\n" +
		"  dataSource:\n" + indentLines(source, "    ")
}

// diskDoc is a VirtualDisk of size (none given if empty) whose spec.dataSource is the YAML
// lines of source (a blank disk if empty).
func diskDoc(name, size, source string) string {
	m := "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: " + name + "}\nspec:\n"
	if size != "" {
		m += "  persistentVolumeClaim: {size: " + size + "}\n"
	}
	if source != "" {
		m += "  dataSource:\n" + indentLines(source, "    ")
	}
	return m
}

// httpSource is a dataSource that downloads url.
func httpSource(url string) string { return "type: HTTP\nhttp: {url: \"" + url + "\"}" }

// objectRefSource is a dataSource that copies the object ref (a flow map: kind, name, ...).
func objectRefSource(ref string) string { return "type: ObjectRef\nobjectRef: " + ref }

// httpChecksumSource is a dataSource that downloads url and checks it against the checksum
// sum of the algorithm algo (sha256, md5).
func httpChecksumSource(url, algo, sum string) string {
	return "type: HTTP\nhttp:\n  url: \"" + url + "\"\n  checksum: {" + algo + ": \"" + sum + "\"}"
}

// uploadSource is a dataSource that takes an upload, checked against the sha256 sum if given.
func uploadSource(sha256 string) string {
	if sha256 == "" {
		return "type: Upload"
	}
	return "type: Upload\nupload:\n  checksum: {sha256: \"" + sha256 + "\"}"
}
