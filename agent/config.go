package agent

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
)

// Defaults of Config (and of circuit-agent's flags).
const (
	DefaultPrefix   = "/circuit/v1"
	DefaultStateDir = "/var/lib/circuit"
	// DefaultLeaseTTL is how long a node stays ready after its agent last
	// reached etcd: short enough that `circuit node list` soon says lost,
	// long enough that an etcd leader election (about a second) does not.
	DefaultLeaseTTL = 10 * time.Second
	// DefaultRequestTimeout bounds each etcd request; it must stay below
	// agentapi.DefaultTimeout, so that circuit hears the agent's answer
	// (ErrUnavailable) rather than its own timeout.
	DefaultRequestTimeout = 3 * time.Second
	// DefaultResync is how often the agent lists everything again and
	// reconciles, whatever the watch said.
	DefaultResync = 30 * time.Second
)

// Config is what an Agent needs. Endpoints, Node and StateDir are
// required; zero durations take their defaults.
type Config struct {
	Endpoints []string    // etcd client URLs, without credentials
	TLS       *tls.Config // nil: plain http endpoints
	// Username and Password authenticate to etcd. They appear in no log
	// and no error.
	Username, Password string
	Prefix             string // etcd key prefix; "" is DefaultPrefix
	Node               string // this node's name (api.ValidNodeName)
	StateDir           string // the node's state dir: circuit.db, the socket
	AdvertiseAddr      string // this node's address for the others
	LeaseTTL           time.Duration
	RequestTimeout     time.Duration
	Resync             time.Duration
	Log                *logrus.Logger // nil: logrus's standard logger
	// MetricsAddr is where /metrics is served (host:port); "" serves none.
	MetricsAddr string
	// Dataplane programs the node's kernel; nil opens the agent's own
	// network namespace (NewKernel).
	Dataplane Dataplane
}

// check fills defaults and refuses what the agent cannot run with.
func (c *Config) check() error {
	if len(c.Endpoints) == 0 {
		return api.Errorf(api.ErrInvalid, "no etcd endpoints")
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if strings.TrimRight(c.Prefix, "/") == "" || !strings.HasPrefix(c.Prefix, "/") {
		return api.Errorf(api.ErrInvalid, "store prefix %q: want an absolute key prefix like %s", c.Prefix, DefaultPrefix)
	}
	if err := api.ValidNodeName(c.Node); err != nil {
		return err
	}
	if c.StateDir == "" {
		return api.Errorf(api.ErrInvalid, "state dir is empty")
	}
	if _, err := netip.ParseAddr(c.AdvertiseAddr); err != nil {
		return api.Errorf(api.ErrInvalid, "advertise address %q: not an IP address", c.AdvertiseAddr)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Resync == 0 {
		c.Resync = DefaultResync
	}
	switch {
	case c.LeaseTTL < time.Second:
		return api.Errorf(api.ErrInvalid, "lease TTL %s: etcd counts leases in seconds, use at least 1s", c.LeaseTTL)
	case c.RequestTimeout <= 0 || c.RequestTimeout >= agentapi.DefaultTimeout:
		return api.Errorf(api.ErrInvalid, "request timeout %s: use more than 0 and less than circuit's own %s", c.RequestTimeout, agentapi.DefaultTimeout)
	case c.Resync < time.Second:
		return api.Errorf(api.ErrInvalid, "resync %s: use at least 1s", c.Resync)
	}
	if c.Log == nil {
		c.Log = logrus.StandardLogger()
	}
	return nil
}

// Store is where etcd is, as --store gives it.
type Store struct {
	Endpoints          []string // scheme://host:port, no credentials
	Username, Password string
	Secure             bool // https
}

// ParseStore reads --store: etcd://HOST:PORT[,HOST:PORT...] (plain
// http), https://HOST:PORT[,...], each optionally with user:password@.
// Its errors never repeat the password.
func ParseStore(s string) (Store, error) {
	var st Store
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return st, api.Errorf(api.ErrInvalid, "store %q: want etcd://HOST:PORT[,HOST:PORT...] or https://HOST:PORT[,...]", RedactStore(s))
	}
	switch scheme {
	case "etcd", "http":
		scheme = "http"
	case "https":
		st.Secure = true
	default:
		return st, api.Errorf(api.ErrInvalid, "store %q: scheme %q: use etcd:// or https://", RedactStore(s), scheme)
	}
	for _, part := range strings.Split(rest, ",") {
		if sch, r, ok := strings.Cut(part, "://"); ok {
			if sch != scheme && !(sch == "etcd" && scheme == "http") {
				return st, api.Errorf(api.ErrInvalid, "store %q: every endpoint must use the same scheme", RedactStore(s))
			}
			part = r
		}
		part = strings.TrimSuffix(part, "/")
		if at := strings.LastIndex(part, "@"); at >= 0 {
			user, pass, _ := strings.Cut(part[:at], ":")
			if st.Username != "" && (user != st.Username || pass != st.Password) {
				return st, api.Errorf(api.ErrInvalid, "store %q: give credentials once", RedactStore(s))
			}
			if user == "" {
				return st, api.Errorf(api.ErrInvalid, "store %q: empty user name", RedactStore(s))
			}
			st.Username, st.Password = user, pass
			part = part[at+1:]
		}
		host, port, err := net.SplitHostPort(part)
		if err != nil || host == "" || strings.ContainsAny(host, "/?#") {
			return st, api.Errorf(api.ErrInvalid, "store %q: endpoint %q: want HOST:PORT", RedactStore(s), part)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return st, api.Errorf(api.ErrInvalid, "store %q: endpoint %q: bad port", RedactStore(s), part)
		}
		st.Endpoints = append(st.Endpoints, scheme+"://"+net.JoinHostPort(host, port))
	}
	return st, nil
}

// RedactStore is --store with any user:password@ replaced by ***@.
func RedactStore(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			start := 0
			if _, r, ok := strings.Cut(p, "://"); ok {
				start = len(p) - len(r)
			}
			if start <= at {
				parts[i] = p[:start] + "***" + p[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// LoadTLS builds the client's TLS configuration from PEM files: the CA
// that signed etcd's certificate (empty: the system's), and this client's
// certificate and key (both or neither). Errors name the files, never
// their contents.
func LoadTLS(cacert, cert, key string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "store CA certificate: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, api.Errorf(api.ErrInvalid, "store CA certificate %s: no PEM certificate in it", cacert)
		}
		cfg.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, api.Errorf(api.ErrInvalid, "give both --store-cert and --store-key, or neither")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			// crypto/tls names what is wrong, not the bytes.
			return nil, api.Errorf(api.ErrInvalid, "store client certificate %s and key %s: %v", cert, key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
