package ssl

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net"
	"time"
)

// Certificate describes one certificate of the chain as the server sent it.
type Certificate struct {
	PEM                string    `json:"as_pem"`
	SHA1Fingerprint    string    `json:"sha1_fingerprint"`
	SHA256Fingerprint  string    `json:"sha256_fingerprint"`
	SPKISHA256         string    `json:"spki_sha256"`
	SerialNumber       string    `json:"serial_number"`
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	NotBefore          time.Time `json:"not_before"`
	NotAfter           time.Time `json:"not_after"`
	SANs               SANs      `json:"subject_alternative_names"`
	PublicKey          PublicKey `json:"public_key"`
	SignatureAlgorithm string    `json:"signature_algorithm"`
	KeyUsage           []string  `json:"key_usage,omitempty"`
	ExtendedKeyUsage   []string  `json:"extended_key_usage,omitempty"`
	IsCA               bool      `json:"is_ca"`
	SelfSigned         bool      `json:"self_signed"`
	Expired            bool      `json:"expired"`
	NotYetValid        bool      `json:"not_yet_valid"`
	ParseError         string    `json:"parse_error,omitempty"`
}

// SANs are the subject alternative names.
type SANs struct {
	DNS   []string `json:"dns,omitempty"`
	IP    []string `json:"ip,omitempty"`
	Email []string `json:"email,omitempty"`
	URI   []string `json:"uri,omitempty"`
}

// PublicKey describes the subject's key.
type PublicKey struct {
	Algorithm string `json:"algorithm"`
	Bits      int    `json:"bits"`
	Curve     string `json:"curve,omitempty"`
}

// CertInfo is cert_info of the output.
type CertInfo struct {
	CertificateChain   []Certificate      `json:"certificate_chain"`
	Trust              Trust              `json:"trust"`
	HostnameValidation HostnameValidation `json:"hostname_validation"`
}

// Trust is the verdict of verifying the chain against the system roots.
type Trust struct {
	Trusted bool   `json:"trusted"`
	Error   string `json:"error,omitempty"`
}

// HostnameValidation says whether the leaf names the host and the IP.
type HostnameValidation struct {
	Hostname        string `json:"hostname,omitempty"`
	MatchesHostname bool   `json:"matches_hostname"`
	IP              string `json:"ip"`
	MatchesIP       bool   `json:"matches_ip"`
}

// describeChain builds cert_info from the DER chain as sent. roots nil
// means the system roots.
func describeChain(ders [][]byte, hostname, ip string, roots *x509.CertPool, now time.Time) *CertInfo {
	info := &CertInfo{CertificateChain: make([]Certificate, 0, len(ders))}
	var parsed []*x509.Certificate
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		info.CertificateChain = append(info.CertificateChain, describeCert(der, c, err, now))
		if err == nil {
			parsed = append(parsed, c)
		}
	}
	info.HostnameValidation = HostnameValidation{Hostname: hostname, IP: ip}
	if len(parsed) == 0 || len(ders) == 0 {
		info.Trust.Error = "no parsable certificate"
		return info
	}
	leaf := parsed[0]
	if hostname != "" {
		info.HostnameValidation.MatchesHostname = leaf.VerifyHostname(hostname) == nil
	}
	info.HostnameValidation.MatchesIP = leaf.VerifyHostname(ip) == nil
	inter := x509.NewCertPool()
	for _, c := range parsed[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		DNSName: hostname, Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	info.Trust.Trusted = err == nil
	if err != nil {
		info.Trust.Error = err.Error()
	}
	return info
}

func describeCert(der []byte, c *x509.Certificate, parseErr error, now time.Time) Certificate {
	s1 := sha1.Sum(der)
	s256 := sha256.Sum256(der)
	out := Certificate{
		PEM:               string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		SHA1Fingerprint:   hex.EncodeToString(s1[:]),
		SHA256Fingerprint: hex.EncodeToString(s256[:]),
	}
	if parseErr != nil {
		out.ParseError = parseErr.Error()
		return out
	}
	spki := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	out.SPKISHA256 = hex.EncodeToString(spki[:])
	out.SerialNumber = c.SerialNumber.String()
	out.Subject = c.Subject.String()
	out.Issuer = c.Issuer.String()
	out.NotBefore, out.NotAfter = c.NotBefore.UTC(), c.NotAfter.UTC()
	out.SANs.DNS = c.DNSNames
	out.SANs.Email = c.EmailAddresses
	for _, ip := range c.IPAddresses {
		out.SANs.IP = append(out.SANs.IP, ip.String())
	}
	for _, u := range c.URIs {
		out.SANs.URI = append(out.SANs.URI, u.String())
	}
	out.PublicKey = describeKey(c)
	out.SignatureAlgorithm = c.SignatureAlgorithm.String()
	out.KeyUsage = keyUsages(c.KeyUsage)
	for _, u := range c.ExtKeyUsage {
		out.ExtendedKeyUsage = append(out.ExtendedKeyUsage, extKeyUsageName(u))
	}
	out.IsCA = c.BasicConstraintsValid && c.IsCA
	// CheckSignatureFrom would insist on a CA flag that self-signed leaves lack
	out.SelfSigned = bytes.Equal(c.RawIssuer, c.RawSubject) &&
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
	out.Expired = now.After(c.NotAfter)
	out.NotYetValid = now.Before(c.NotBefore)
	return out
}

func describeKey(c *x509.Certificate) PublicKey {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		return PublicKey{Algorithm: "RSA", Bits: k.N.BitLen()}
	case *ecdsa.PublicKey:
		return PublicKey{Algorithm: "ECDSA", Bits: k.Curve.Params().BitSize, Curve: k.Curve.Params().Name}
	case ed25519.PublicKey:
		return PublicKey{Algorithm: "Ed25519", Bits: 256, Curve: "Ed25519"}
	}
	return PublicKey{Algorithm: c.PublicKeyAlgorithm.String()}
}

var keyUsageNames = []struct {
	bit  x509.KeyUsage
	name string
}{
	{x509.KeyUsageDigitalSignature, "digital_signature"},
	{x509.KeyUsageContentCommitment, "content_commitment"},
	{x509.KeyUsageKeyEncipherment, "key_encipherment"},
	{x509.KeyUsageDataEncipherment, "data_encipherment"},
	{x509.KeyUsageKeyAgreement, "key_agreement"},
	{x509.KeyUsageCertSign, "cert_sign"},
	{x509.KeyUsageCRLSign, "crl_sign"},
	{x509.KeyUsageEncipherOnly, "encipher_only"},
	{x509.KeyUsageDecipherOnly, "decipher_only"},
}

func keyUsages(u x509.KeyUsage) []string {
	var out []string
	for _, k := range keyUsageNames {
		if u&k.bit != 0 {
			out = append(out, k.name)
		}
	}
	return out
}

func extKeyUsageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageAny:
		return "any"
	case x509.ExtKeyUsageServerAuth:
		return "server_auth"
	case x509.ExtKeyUsageClientAuth:
		return "client_auth"
	case x509.ExtKeyUsageCodeSigning:
		return "code_signing"
	case x509.ExtKeyUsageEmailProtection:
		return "email_protection"
	case x509.ExtKeyUsageTimeStamping:
		return "time_stamping"
	case x509.ExtKeyUsageOCSPSigning:
		return "ocsp_signing"
	}
	return "other"
}

// ipOnly strips a zone or brackets so VerifyHostname sees a bare address.
func ipOnly(s string) string {
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	return s
}
