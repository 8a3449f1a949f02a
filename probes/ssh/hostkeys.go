//lint:file-ignore SA1019 a server's ssh-dss host key is measured and reported, never used to trust anything

package ssh

import (
	"context"
	"crypto/dsa" //nolint:staticcheck // servers still hold ssh-dss keys; the module must size them
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	xssh "golang.org/x/crypto/ssh"
)

// Cypher is one host key, in BinaryEdge's shape plus the SHA256 form and
// what signs with it.
type Cypher struct {
	// Cypher is the key type ("ssh-rsa", "ecdsa-sha2-nistp256", a
	// certificate type, …).
	Cypher string `json:"cypher"`
	// Key is the public key blob, base64 as in known_hosts.
	Key string `json:"key"`
	// Length is the key size in bits.
	Length int `json:"length,omitempty"`
	// Fingerprint is the MD5 fingerprint, colon-separated hex.
	Fingerprint string `json:"fingerprint"`
	// FingerprintSHA256 is OpenSSH's "SHA256:…" form.
	FingerprintSHA256 string `json:"fingerprint_sha256"`
	// HostKeyAlgorithm is the signature algorithm the handshake used;
	// HostKeyAlgorithms every one the server offers for this key.
	HostKeyAlgorithm  string   `json:"host_key_algorithm"`
	HostKeyAlgorithms []string `json:"host_key_algorithms"`
	// SignatureVerified: the server signed the exchange with this key.
	SignatureVerified bool             `json:"signature_verified"`
	Certificate       *CertificateInfo `json:"certificate,omitempty"`
}

// CertificateInfo describes an OpenSSH host certificate.
type CertificateInfo struct {
	KeyID                   string   `json:"key_id"`
	Serial                  uint64   `json:"serial"`
	ValidPrincipals         []string `json:"valid_principals"`
	ValidAfter              string   `json:"valid_after"`
	ValidBefore             string   `json:"valid_before"`
	SignatureKeyType        string   `json:"signature_key_type"`
	SignatureKeyFingerprint string   `json:"signature_key_fingerprint_sha256"`
}

// keyFamily is the host key algorithms of one key: RSA's three signature
// algorithms share a key, as do the RSA certificate ones.
type keyFamily struct {
	name      string   // the key type
	algorithm string   // the one to negotiate
	all       []string // every algorithm of the family the server lists
}

// rsaPreference orders RSA signature algorithms, best first.
var rsaPreference = map[string]int{
	"rsa-sha2-512": 0, "rsa-sha2-256": 1, "ssh-rsa": 2,
	"rsa-sha2-512-cert-v01@openssh.com": 0, "rsa-sha2-256-cert-v01@openssh.com": 1, "ssh-rsa-cert-v01@openssh.com": 2,
}

func familyOf(alg string) string {
	switch alg {
	case "rsa-sha2-256", "rsa-sha2-512":
		return "ssh-rsa"
	case "rsa-sha2-256-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com":
		return "ssh-rsa-cert-v01@openssh.com"
	}
	return alg
}

// hostKeyFamilies groups the server's host key algorithms by key, in the
// server's order.
func hostKeyFamilies(algs []string) []keyFamily {
	var fams []keyFamily
	for _, a := range algs {
		if a == "" {
			continue
		}
		name := familyOf(a)
		i := slices.IndexFunc(fams, func(f keyFamily) bool { return f.name == name })
		if i < 0 {
			fams = append(fams, keyFamily{name: name, algorithm: a, all: []string{a}})
			continue
		}
		f := &fams[i]
		f.all = append(f.all, a)
		if p, ok := rsaPreference[a]; ok && p < rsaPreference[f.algorithm] {
			f.algorithm = a
		}
	}
	return fams
}

// errKeyCaptured aborts a handshake once the host key is in hand.
var errKeyCaptured = errors.New("host key captured")

// hostKeys runs one x/crypto/ssh handshake per key family not in have,
// sequentially: at most one connection at a time against the server.
func (m *Module) hostKeys(ctx context.Context, addr string, algs []string, have []Cypher, stepErrs map[string]string) []Cypher {
	supported := append(xssh.SupportedAlgorithms().HostKeys, xssh.InsecureAlgorithms().HostKeys...)
	var out []Cypher
	for _, f := range hostKeyFamilies(algs) {
		if slices.ContainsFunc(have, func(c Cypher) bool { return familyOf(c.HostKeyAlgorithm) == f.name }) {
			continue
		}
		if ctx.Err() != nil {
			stepErrs["host_key:"+f.name] = ctx.Err().Error()
			continue
		}
		if !slices.Contains(supported, f.algorithm) {
			stepErrs["host_key:"+f.name] = "unsupported host key algorithm " + f.algorithm
			continue
		}
		c, err := m.hostKey(ctx, addr, f)
		if err != nil {
			stepErrs["host_key:"+f.name] = err.Error()
			continue
		}
		out = append(out, c)
	}
	return out
}

func (m *Module) hostKey(ctx context.Context, addr string, f keyFamily) (Cypher, error) {
	conn, done, err := m.dial(ctx, addr)
	if err != nil {
		return Cypher{}, err
	}
	defer done()
	supported, insecure := xssh.SupportedAlgorithms(), xssh.InsecureAlgorithms()
	var captured xssh.PublicKey
	cfg := &xssh.ClientConfig{
		Config: xssh.Config{
			// everything x/crypto speaks: the point is the key, not a secure session
			KeyExchanges: append(supported.KeyExchanges, insecure.KeyExchanges...),
			Ciphers:      append(supported.Ciphers, insecure.Ciphers...),
			MACs:         append(supported.MACs, insecure.MACs...),
		},
		User:              m.cfg.User,
		ClientVersion:     m.cfg.ClientVersion,
		HostKeyAlgorithms: []string{f.algorithm},
		HostKeyCallback: func(_ string, _ net.Addr, key xssh.PublicKey) error {
			captured = key
			return errKeyCaptured
		},
	}
	_, _, _, err = xssh.NewClientConn(conn, addr, cfg)
	if captured == nil {
		if err == nil {
			err = errors.New("handshake ended without a host key")
		}
		return Cypher{}, fmt.Errorf("cannot get %s host key: %w", f.algorithm, err)
	}
	c, err := newCypher(captured.Marshal(), f.algorithm, f.all)
	if err != nil {
		return Cypher{}, err
	}
	// x/crypto checks the exchange signature before calling back
	c.SignatureVerified = true
	return c, nil
}

// newCypher describes a host key blob.
func newCypher(blob []byte, alg string, all []string) (Cypher, error) {
	pub, err := xssh.ParsePublicKey(blob)
	if err != nil {
		return Cypher{}, fmt.Errorf("cannot parse %s host key: %w", alg, err)
	}
	c := Cypher{
		Cypher:            pub.Type(),
		Key:               base64.StdEncoding.EncodeToString(blob),
		Fingerprint:       xssh.FingerprintLegacyMD5(pub),
		FingerprintSHA256: xssh.FingerprintSHA256(pub),
		HostKeyAlgorithm:  alg,
		HostKeyAlgorithms: all,
	}
	key := pub
	if cert, ok := pub.(*xssh.Certificate); ok {
		key = cert.Key
		c.Certificate = &CertificateInfo{
			KeyID:                   cert.KeyId,
			Serial:                  cert.Serial,
			ValidPrincipals:         cert.ValidPrincipals,
			ValidAfter:              certTime(cert.ValidAfter),
			ValidBefore:             certTime(cert.ValidBefore),
			SignatureKeyType:        cert.SignatureKey.Type(),
			SignatureKeyFingerprint: xssh.FingerprintSHA256(cert.SignatureKey),
		}
	}
	c.Length = keyBits(key)
	return c, nil
}

func certTime(t uint64) string {
	if t == xssh.CertTimeInfinity {
		return "forever"
	}
	if t > 1<<62 {
		return fmt.Sprint(t)
	}
	return time.Unix(int64(t), 0).UTC().Format(time.RFC3339)
}

// keyBits is the size of the key as ssh-keygen -l reports it.
func keyBits(pub xssh.PublicKey) int {
	cp, ok := pub.(xssh.CryptoPublicKey)
	if !ok {
		if strings.Contains(pub.Type(), "ed25519") {
			return 256
		}
		return 0
	}
	switch k := cp.CryptoPublicKey().(type) {
	case *rsa.PublicKey:
		return k.N.BitLen()
	case *ecdsa.PublicKey:
		return k.Curve.Params().BitSize
	case ed25519.PublicKey:
		return 256
	case *dsa.PublicKey:
		return k.P.BitLen()
	}
	return 0
}
