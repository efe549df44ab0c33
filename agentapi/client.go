package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// DefaultTimeout bounds a request to the agent, which bounds its own
// requests to etcd below it: with no agent, or an agent that cannot reach
// etcd, a command fails within it, with nothing changed.
const DefaultTimeout = 5 * time.Second

// The methods the API uses.
const (
	MethodGet    = "GET"
	MethodPost   = "POST"
	MethodDelete = "DELETE"
)

// maxAnswer bounds what circuit reads of one answer.
const maxAnswer = 16 << 20

// Client talks to the agent of one state dir.
//
// It speaks HTTP/1.0 by hand rather than through net/http: the circuit
// binary starts on every container start, and net/http with the crypto it
// brings costs ~3 ms of package init there (docs/benchmarks.md, section 8).
// One request per connection, the answer read to its end or to EOF (an
// HTTP/1.0 server closes after it, never chunks), is all the socket needs.
type Client struct {
	socket  string
	timeout time.Duration
}

// NewClient returns a client for the agent whose socket is in stateDir.
func NewClient(stateDir string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{socket: filepath.Join(stateDir, SocketName), timeout: timeout}
}

// Do sends in (nil: no body) to path with method and decodes the answer
// into out (nil: none). An agent that does not answer is ErrUnavailable.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	code, status, b, err := c.roundTrip(ctx, method, path, body)
	if err != nil {
		return api.Errorf(api.ErrUnavailable, "circuit-agent at %s does not answer (is it running?): %v", c.socket, err)
	}
	if code >= 300 {
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			return fmt.Errorf("circuit-agent: %s", status)
		}
		return e.Err()
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("circuit-agent: answer: %w", err)
	}
	return nil
}

// roundTrip sends one request and reads its answer: the status code, the
// status line's text after the protocol ("404 Not Found") and the body.
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte) (int, string, []byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return 0, "", nil, err
	}
	defer conn.Close()
	// The context's end unblocks a read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}

	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.0\r\nHost: circuit-agent\r\n", method, path)
	if body != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, "", nil, ctxErr(ctx, err)
	}

	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, "", nil, ctxErr(ctx, fmt.Errorf("read status line: %w", err))
	}
	code, status, err := parseStatusLine(line)
	if err != nil {
		return 0, "", nil, err
	}
	length := int64(-1)
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			return 0, "", nil, ctxErr(ctx, fmt.Errorf("read header: %w", err))
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		if strings.EqualFold(strings.TrimSpace(k), "Content-Length") {
			if length, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil || length < 0 {
				return 0, "", nil, fmt.Errorf("bad Content-Length %q", v)
			}
		}
	}
	if length > maxAnswer {
		return 0, "", nil, fmt.Errorf("answer of %d bytes is over %d", length, maxAnswer)
	}
	var b []byte
	if length >= 0 {
		b = make([]byte, length)
		_, err = io.ReadFull(r, b)
	} else {
		b, err = io.ReadAll(io.LimitReader(r, maxAnswer))
	}
	if err != nil {
		return 0, "", nil, ctxErr(ctx, fmt.Errorf("read answer: %w", err))
	}
	return code, status, b, nil
}

// parseStatusLine reads "HTTP/1.x CODE TEXT".
func parseStatusLine(line string) (int, string, error) {
	line = strings.TrimRight(line, "\r\n")
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return 0, "", fmt.Errorf("not an HTTP answer: %q", line)
	}
	num, _, _ := strings.Cut(status, " ")
	code, err := strconv.Atoi(num)
	if err != nil || code < 100 || code > 999 {
		return 0, "", fmt.Errorf("bad status line %q", line)
	}
	return code, status, nil
}

// ctxErr names the context's end as the cause of an I/O error it caused.
// The connection's deadlines are the context's, so one that passed is the
// context's deadline, even in the instant before ctx.Err says so.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	if errors.Is(err, net.ErrClosed) {
		return io.ErrUnexpectedEOF
	}
	return err
}
