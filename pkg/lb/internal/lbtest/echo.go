package lbtest

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// ServeEcho answers each line on a TCP connection to addr inside n with
// "NAME LINE", for as long as the client keeps the connection: a
// long-lived connection through a VIP, whose target tells by name.
func (n *NS) ServeEcho(t testing.TB, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("%s: listen %s: %v", n.Name, addr, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewScanner(c)
				for r.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", name, r.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
}

// Conn is a client connection to an echo service.
type Conn struct {
	c net.Conn
	r *bufio.Reader
}

// DialEcho connects from n (source address src, "" for any) to addr.
func (n *NS) DialEcho(src, addr string) (*Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, r: bufio.NewReader(c)}, nil
}

// Ask sends a line and returns the name of the server that echoed it.
func (c *Conn) Ask(line string) (string, error) {
	c.c.SetDeadline(time.Now().Add(20 * time.Second)) // a backstop
	if _, err := fmt.Fprintln(c.c, line); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, echoed, ok := strings.Cut(strings.TrimSpace(got), " ")
	if !ok || echoed != line {
		return "", fmt.Errorf("unexpected answer %q to %q", got, line)
	}
	return name, nil
}

// Reset ends the connection with a TCP reset, so that neither conntrack
// nor IPVS keeps it in TIME_WAIT.
func (c *Conn) Reset() error {
	if tc, ok := c.c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return c.c.Close()
}

// Close ends the connection normally.
func (c *Conn) Close() error { return c.c.Close() }

// Which dials addr once, asks one line, closes, and returns who answered.
func (n *NS) Which(src, addr string) (string, error) {
	c, err := n.DialEcho(src, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Ask("which")
}
