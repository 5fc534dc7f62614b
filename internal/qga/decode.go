package qga

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on decoded values: longer strings are cut, longer lists are cut.
const (
	MaxString     = 256 // bytes of any string kept from the guest
	MaxInterfaces = 32  // interfaces kept from guest-network-get-interfaces
	MaxAddresses  = 16  // addresses kept per interface
)

// clean returns s as valid UTF-8 without control characters, cut to at most max bytes.
func clean(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// OSInfo is guest-get-osinfo's answer.
type OSInfo struct {
	Name          string
	PrettyName    string
	Version       string
	VersionID     string
	ID            string
	KernelRelease string
	KernelVersion string
	Machine       string
}

// Interface is one guest network interface with its addresses.
type Interface struct {
	Name            string
	HardwareAddress string // "" when absent or not a MAC address
	IPAddresses     []IPAddress
}

// IPAddress is one address of a guest interface.
type IPAddress struct {
	Address netip.Addr
	Prefix  int
}

// DecodeOSInfo decodes the return value of guest-get-osinfo.
func DecodeOSInfo(raw []byte) (OSInfo, error) {
	var w struct {
		Name          string `json:"name"`
		PrettyName    string `json:"pretty-name"`
		Version       string `json:"version"`
		VersionID     string `json:"version-id"`
		ID            string `json:"id"`
		KernelRelease string `json:"kernel-release"`
		KernelVersion string `json:"kernel-version"`
		Machine       string `json:"machine"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return OSInfo{}, fmt.Errorf("guest-get-osinfo: %v", err)
	}
	return OSInfo{
		Name: clean(w.Name, MaxString), PrettyName: clean(w.PrettyName, MaxString),
		Version: clean(w.Version, MaxString), VersionID: clean(w.VersionID, MaxString),
		ID: clean(w.ID, MaxString), KernelRelease: clean(w.KernelRelease, MaxString),
		KernelVersion: clean(w.KernelVersion, MaxString), Machine: clean(w.Machine, MaxString),
	}, nil
}

// DecodeHostName decodes the return value of guest-get-host-name.
func DecodeHostName(raw []byte) (string, error) {
	var w struct {
		HostName *string `json:"host-name"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return "", fmt.Errorf("guest-get-host-name: %v", err)
	}
	if w.HostName == nil {
		return "", fmt.Errorf("guest-get-host-name: no host-name in the answer")
	}
	return clean(*w.HostName, MaxString), nil
}

// DecodeInterfaces decodes the return value of guest-network-get-interfaces. Interfaces past
// MaxInterfaces and addresses past MaxAddresses are dropped, as are addresses that do not
// parse or whose prefix does not fit them; an interface without a name is dropped.
func DecodeInterfaces(raw []byte) ([]Interface, error) {
	var w []struct {
		Name            string `json:"name"`
		HardwareAddress string `json:"hardware-address"`
		IPAddresses     []struct {
			Type    string `json:"ip-address-type"`
			Address string `json:"ip-address"`
			Prefix  int    `json:"prefix"`
		} `json:"ip-addresses"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return nil, fmt.Errorf("guest-network-get-interfaces: %v", err)
	}
	var out []Interface
	for _, i := range w {
		if len(out) == MaxInterfaces {
			break
		}
		name := clean(i.Name, 64)
		if name == "" {
			continue
		}
		it := Interface{Name: name}
		if mac, err := net.ParseMAC(i.HardwareAddress); err == nil && len(mac) == 6 {
			it.HardwareAddress = mac.String()
		}
		for _, a := range i.IPAddresses {
			if len(it.IPAddresses) == MaxAddresses {
				break
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || ip.Zone() != "" || a.Prefix < 0 || a.Prefix > ip.BitLen() {
				continue
			}
			it.IPAddresses = append(it.IPAddresses, IPAddress{Address: ip, Prefix: a.Prefix})
		}
		out = append(out, it)
	}
	return out, nil
}

// decodeInt decodes an integer return value (fsfreeze counts).
func decodeInt(cmd string, raw []byte) (int, error) {
	var n int
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("%s: %v", cmd, err)
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: negative count %d", cmd, n)
	}
	return n, nil
}

// Freeze states of guest-fsfreeze-status.
const (
	FreezeThawed = "thawed"
	FreezeFrozen = "frozen"
)

// DecodeFreezeStatus decodes the return value of guest-fsfreeze-status.
func DecodeFreezeStatus(raw []byte) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("guest-fsfreeze-status: %v", err)
	}
	if s != FreezeThawed && s != FreezeFrozen {
		return "", fmt.Errorf("guest-fsfreeze-status: unknown state %q", clean(s, 32))
	}
	return s, nil
}

// Ping calls guest-ping.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.call(ctx, "guest-ping", nil, false)
	return err
}

// OSInfo calls guest-get-osinfo.
func (c *Client) OSInfo(ctx context.Context) (OSInfo, error) {
	raw, err := c.call(ctx, "guest-get-osinfo", nil, false)
	if err != nil {
		return OSInfo{}, err
	}
	return DecodeOSInfo(raw)
}

// HostName calls guest-get-host-name.
func (c *Client) HostName(ctx context.Context) (string, error) {
	raw, err := c.call(ctx, "guest-get-host-name", nil, false)
	if err != nil {
		return "", err
	}
	return DecodeHostName(raw)
}

// Interfaces calls guest-network-get-interfaces.
func (c *Client) Interfaces(ctx context.Context) ([]Interface, error) {
	raw, err := c.call(ctx, "guest-network-get-interfaces", nil, false)
	if err != nil {
		return nil, err
	}
	return DecodeInterfaces(raw)
}

// FreezeFilesystems calls guest-fsfreeze-freeze and returns how many filesystems the guest
// froze.
func (c *Client) FreezeFilesystems(ctx context.Context) (int, error) {
	raw, err := c.call(ctx, "guest-fsfreeze-freeze", nil, false)
	if err != nil {
		return 0, err
	}
	return decodeInt("guest-fsfreeze-freeze", raw)
}

// ThawFilesystems calls guest-fsfreeze-thaw and returns how many filesystems were thawed.
func (c *Client) ThawFilesystems(ctx context.Context) (int, error) {
	raw, err := c.call(ctx, "guest-fsfreeze-thaw", nil, false)
	if err != nil {
		return 0, err
	}
	return decodeInt("guest-fsfreeze-thaw", raw)
}

// FreezeStatus calls guest-fsfreeze-status (FreezeThawed or FreezeFrozen).
func (c *Client) FreezeStatus(ctx context.Context) (string, error) {
	raw, err := c.call(ctx, "guest-fsfreeze-status", nil, false)
	if err != nil {
		return "", err
	}
	return DecodeFreezeStatus(raw)
}

// CheckUser checks a guest user name for guest-set-user-password.
func CheckUser(user string) error {
	if user == "" || len(user) > 32 {
		return fmt.Errorf("user name must be 1 to 32 characters")
	}
	for _, r := range user {
		if r == ':' || r > unicode.MaxASCII || unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("user name %q has a character not allowed in a user name", clean(user, 32))
		}
	}
	return nil
}

// CheckPassword checks a clear-text password for guest-set-user-password: 1 to 256 bytes,
// no line breaks or NUL (the guest feeds "user:password" lines to chpasswd).
func CheckPassword(pw []byte) error {
	if len(pw) == 0 || len(pw) > 256 {
		return fmt.Errorf("password must be 1 to 256 bytes")
	}
	if strings.ContainsAny(string(pw), "\n\r\x00") {
		return fmt.Errorf("password must not contain line breaks or NUL")
	}
	return nil
}

// SetUserPassword calls guest-set-user-password with a clear-text password (the guest
// hashes it).
func (c *Client) SetUserPassword(ctx context.Context, user string, password []byte) error {
	if err := CheckUser(user); err != nil {
		return err
	}
	if err := CheckPassword(password); err != nil {
		return err
	}
	_, err := c.call(ctx, "guest-set-user-password", map[string]any{
		"username": user, "password": base64.StdEncoding.EncodeToString(password), "crypted": false,
	}, false)
	return err
}

// Shutdown calls guest-shutdown with mode powerdown. The agent answers nothing when it
// starts the shutdown, so the call returns once the request is written; the client is
// broken afterwards.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, "guest-shutdown", map[string]any{"mode": "powerdown"}, true)
	return err
}
