package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The batch is sent on a socket of our own rather than google/nftables':
// it mixes messages google/nftables encodes with rules it cannot express
// (conntrack keys with a direction), and asks for one ack only, on its
// last message, so that a batch of any size gets one reply when it
// commits (an ack per message overflows the socket's receive buffer in a
// large batch). The kernel reports every message that fails, so no
// other reply means success.

// nlTimeout bounds a wait for the kernel's answer; a commit of a large
// table can take seconds.
const nlTimeout = 2 * time.Minute

// nlConn is a netfilter netlink socket and the buffer its answers are
// read into (reused: a fresh buffer per read costs page faults).
type nlConn struct {
	*netlink.Conn
	buf []byte
}

func dial(nsFd int) (*nlConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	// An error then echoes only the failed message's header, so answers
	// stay small whatever the batch.
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		c.Close()
		return nil, fmt.Errorf("netfilter netlink: %w", err)
	}
	return &nlConn{Conn: c, buf: make([]byte, 256<<10)}, nil
}

func nfgenmsg(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

// sendBatch commits msgs as one nftables transaction.
func sendBatch(c *nlConn, msgs []netlink.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	all := make([]netlink.Message, 0, len(msgs)+2)
	all = append(all, netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN),
		Flags: netlink.Request}, Data: nfgenmsg(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)})
	size := 0
	for _, m := range msgs {
		m.Header.Flags &^= netlink.Acknowledge | unix.NLM_F_ECHO
		m.Header.Sequence, m.Header.PID = 0, 0
		all = append(all, m)
		size += 16 + len(m.Data)
	}
	all[len(all)-1].Header.Flags |= netlink.Acknowledge
	all = append(all, netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END),
		Flags: netlink.Request}, Data: nfgenmsg(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)})
	if size > 128<<10 {
		if err := forceBuffers(c, 2*size+(1<<20)); err != nil {
			return fmt.Errorf("socket buffers for a %d-byte batch: %w", size, err)
		}
	}
	sent, err := c.SendMessages(all)
	if err != nil {
		return fmt.Errorf("send batch: %w", err)
	}
	begin, last := sent[0].Header.Sequence, sent[len(sent)-2].Header.Sequence
	var errs []error
	for {
		replies, err := receive(c)
		if err != nil {
			return fmt.Errorf("read the kernel's answer: %w", err)
		}
		for _, r := range replies {
			if r.errno != 0 {
				errs = append(errs, fmt.Errorf("%s: %w", msgName(sent, r.seq), r.errno))
			}
			if r.seq == last || (r.seq == begin && r.errno != 0) {
				return errors.Join(errs...)
			}
		}
	}
}

// forceBuffers raises both socket buffers past the sysctl limits (root).
func forceBuffers(c *nlConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, n); e != nil {
				serr = e
			}
		}
	})
	return errors.Join(err, serr)
}

// reply is one message read from the socket; errno is set for an
// NLMSG_ERROR that reports a failure (an ack has errno 0).
type reply struct {
	typ   netlink.HeaderType
	seq   uint32
	errno syscall.Errno
	ack   bool // NLMSG_ERROR: the answer to request seq ends here
	data  []byte
}

// receive reads one datagram and splits it into messages, keeping the
// sequence number an error refers to (mdlayher/netlink's Receive turns an
// error into a Go error without it).
func receive(c *nlConn) ([]reply, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	if err := c.SetReadDeadline(time.Now().Add(nlTimeout)); err != nil {
		return nil, err
	}
	buf := c.buf
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	return parseReplies(buf[:n])
}

func parseReplies(b []byte) ([]reply, error) {
	var out []reply
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("malformed netlink message (length %d of %d)", l, len(b))
		}
		r := reply{typ: netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6])),
			seq: binary.NativeEndian.Uint32(b[8:12]), data: b[unix.NLMSG_HDRLEN:l]}
		if r.typ == netlink.Error {
			if len(r.data) < 4+unix.NLMSG_HDRLEN {
				return nil, fmt.Errorf("short netlink error message")
			}
			r.ack = true
			r.errno = syscall.Errno(-int32(binary.NativeEndian.Uint32(r.data[0:4])))
			r.seq = binary.NativeEndian.Uint32(r.data[4+8 : 4+12])
		}
		out = append(out, r)
		b = b[(l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1):]
	}
	return out, nil
}

// msgName names the message with sequence number seq, for errors.
func msgName(sent []netlink.Message, seq uint32) string {
	for _, m := range sent {
		if m.Header.Sequence == seq {
			if n, ok := msgNames[uint16(m.Header.Type)&0xff]; ok && uint16(m.Header.Type)>>8 == unix.NFNL_SUBSYS_NFTABLES {
				return n
			}
			return fmt.Sprintf("message type %#x", uint16(m.Header.Type))
		}
	}
	return "batch"
}

const (
	nftMsgNewSetElem = unix.NFT_MSG_NEWSETELEM
	nftMsgDelSetElem = unix.NFT_MSG_DELSETELEM
)

var msgNames = map[uint16]string{
	unix.NFT_MSG_NEWTABLE: "add table", unix.NFT_MSG_DELTABLE: "delete table",
	unix.NFT_MSG_NEWCHAIN: "add chain", unix.NFT_MSG_DELCHAIN: "delete chain",
	unix.NFT_MSG_NEWRULE: "add rule", unix.NFT_MSG_DELRULE: "delete rule",
	unix.NFT_MSG_NEWSET: "add set", unix.NFT_MSG_DELSET: "delete set",
	unix.NFT_MSG_NEWSETELEM: "add element", unix.NFT_MSG_DELSETELEM: "delete element",
	unix.NFT_MSG_NEWOBJ: "add object", unix.NFT_MSG_DELOBJ: "delete object",
}
