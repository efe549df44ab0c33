package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/pkg/ocistate"
)

// hookPATH is the PATH written into hook entries: runc runs hooks with
// exactly the env of the entry, and CNI plugins may need the usual tools.
const hookPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Hook time bounds. runc kills a hook that outlives its entry's OCI
// "timeout"; circuit gives up a little before, so it can undo what it did
// and say why in one line, instead of being killed half-way.
const (
	DefaultHookTimeout = 30 // seconds, written into the entries
	minHookTimeout     = 3
	hookTimeoutEnv     = "CIRCUIT_HOOK_TIMEOUT"
)

// hookBudget splits a hook timeout into the time circuit works and the
// margin it keeps for undoing: a third of it, one to three seconds.
func hookBudget(timeout time.Duration) (work, undo time.Duration) {
	undo = min(max(timeout/3, time.Second), 3*time.Second)
	return timeout - undo, undo
}

// networkAnnotation lets one container choose its networks (comma
// separated); it wins over CNI_CONF and CIRCUIT_NETWORK, which are the same
// for every container using the hook entry.
const networkAnnotation = "circuit.network"

// hookMode runs circuit as a runc hook: the OCI state is on stdin, the
// hook entry's environment says which network. Every action and error is
// also appended to <state>/hook.log, since runc shows a hook's stderr only
// when the hook fails.
func (a *app) hookMode(ctx context.Context, cmd *cli.Command) error {
	st, err := ocistate.Decode(a.stdin)
	switch {
	case err == nil:
	case errors.Is(err, ocistate.ErrEmpty):
		return a.rootHelp(ctx, cmd)
	case errors.Is(err, ocistate.ErrTooLarge):
		err = errors.New("hook: OCI state on stdin is larger than 1 MiB")
	case errors.Is(err, ocistate.ErrMalformed):
		err = fmt.Errorf("hook: stdin is %w", err)
	default:
		err = fmt.Errorf("hook: %w", err)
	}
	if err != nil {
		a.hookLog("-", "-", err.Error())
		return err
	}

	req, err := a.hookRequest(st)
	if err != nil {
		a.hookLog(st.ID, string(st.Status), err.Error())
		return err
	}
	a.g.Log.WithFields(map[string]any{"id": req.ID, "status": req.Status, "pid": req.PID, "networks": req.Networks, "cni-conf": req.CNIConf}).Debug("hook")
	// Every wait inside (the datastore's lock, the plugins) ends before
	// runc's timeout, which the entry's env tells (entries written by
	// hand, without it, get the default).
	timeout := time.Duration(DefaultHookTimeout) * time.Second
	if v, ok := a.lookupEnv(hookTimeoutEnv); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < minHookTimeout {
			err = fmt.Errorf("hook: %s=%q: want a number of seconds, at least %d", hookTimeoutEnv, v, minHookTimeout)
			a.hookLog(req.ID, req.Status, err.Error())
			return err
		}
		timeout = time.Duration(n) * time.Second
	}
	work, undo := hookBudget(timeout)
	ctx, cancel := context.WithTimeout(ctx, work)
	defer cancel()
	a.g.LockTimeout, a.g.UndoTimeout = work/3, undo
	err = a.withController(ctx, func(c controller.Controller) error {
		res, err := c.Hook(ctx, req)
		if res != nil {
			for _, action := range res.Actions {
				a.hookLog(req.ID, req.Status, action)
			}
		}
		return err
	})
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("hook: container %s (%s): gave up after %s, before runc's hook timeout of %s, and undid what it had done: %w",
			req.ID, req.Status, work, timeout, err)
	} else if err != nil {
		err = fmt.Errorf("hook: container %s (%s): %w", req.ID, req.Status, err)
	}
	if err != nil {
		a.hookLog(req.ID, req.Status, err.Error())
	}
	return err
}

// hookRequest combines the OCI state with the hook entry's environment.
func (a *app) hookRequest(st *specs.State) (api.HookRequest, error) {
	req := api.HookRequest{
		ID:          st.ID,
		Status:      string(st.Status),
		PID:         st.Pid,
		Bundle:      st.Bundle,
		Annotations: st.Annotations,
	}
	if conf, _ := a.lookupEnv("CNI_CONF"); conf != "" {
		// Hooks run in the bundle directory: make a relative path explicit.
		abs, err := filepath.Abs(conf)
		if err != nil {
			return req, fmt.Errorf("hook: CNI_CONF: %w", err)
		}
		req.CNIConf = abs
	}
	if v, _ := a.lookupEnv("CIRCUIT_NETWORK"); v != "" {
		req.Networks = splitNames(v)
	}
	if nets := splitNames(st.Annotations[networkAnnotation]); len(nets) > 0 {
		req.Networks, req.CNIConf = nets, ""
	}
	req.IfName, _ = a.lookupEnv("CIRCUIT_IFNAME")
	// What the container asks the plugins for: its annotations, else the
	// hook entry's environment.
	setting := func(annotation, env string) []string {
		if v := splitNames(st.Annotations[annotation]); len(v) > 0 {
			return v
		}
		v, _ := a.lookupEnv(env)
		return splitNames(v)
	}
	for _, p := range setting("circuit.publish", "CIRCUIT_PUBLISH") {
		m, err := api.ParsePublish(p)
		if err != nil {
			return req, fmt.Errorf("hook: %w", err)
		}
		req.Publish = append(req.Publish, m...)
	}
	req.RequestedIPs = setting("circuit.ip", "CIRCUIT_IP")
	switch mac := setting("circuit.mac", "CIRCUIT_MAC"); len(mac) {
	case 0:
	case 1:
		req.RequestedMAC = mac[0]
	default:
		return req, fmt.Errorf("hook: circuit.mac %q: one MAC, an interface has one", strings.Join(mac, ","))
	}
	req.Aliases = setting("circuit.alias", "CIRCUIT_ALIAS")
	return req, nil
}

func splitNames(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// hookLog appends one line to <state>/hook.log. Failing to log must not fail
// the hook, so problems only reach the debug log. It writes only into a
// state dir this user owns (narrowed to 0700, as the datastore does), never
// through a symlink, and keeps the log 0600.
func (a *app) hookLog(id, status, msg string) {
	// Only root may make the state dir: one made by another user would be
	// theirs to tamper with.
	if os.Geteuid() != 0 {
		return
	}
	if err := a.openHookLog(func(f *os.File) error {
		// One write per line: O_APPEND keeps concurrent hooks' lines whole.
		msg := strings.Join(strings.Fields(msg), " ")
		_, err := fmt.Fprintf(f, "%s %s %s %s\n", a.now().Format("2006-01-02T15:04:05Z07:00"), id, status, msg)
		return err
	}); err != nil {
		a.g.Log.Debugf("hook log: %v", err)
	}
}

func (a *app) openHookLog(write func(*os.File) error) error {
	dir := a.g.StateDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir %s is not this user's: not logging there", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "hook.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return err // a symlink gives ELOOP
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	} else if fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			return err
		}
	}
	return write(f)
}

func hookCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "hook",
		Usage: "print or install the runc hook entries that run circuit",
		Commands: []*cli.Command{
			hookConfigCommand(a),
			hookInstallCommand(a),
		},
	}
}

func hookFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringSliceFlag{Name: "network", Usage: "connect to network `NAME` (repeat or comma separate)"},
		&cli.StringFlag{Name: "cni-conf", Usage: "connect to the network defined in `FILE` (a conf or conflist)"},
		&cli.StringFlag{Name: "ifname", Usage: "interface `NAME` inside the container"},
		&cli.BoolFlag{Name: "create-runtime", Usage: "use a createRuntime hook instead of the deprecated prestart"},
		&cli.IntFlag{Name: "timeout", Value: DefaultHookTimeout, Usage: "`SECONDS` runc gives each hook before killing it; circuit gives up, undoing its work, a little before"},
	}
	return append(flags, settingsFlags()...)
}

// hookSet builds circuit's hook entries from the flags: the same entry for
// setup and teardown, since the OCI state's status tells them apart.
func (a *app) hookSet(cmd *cli.Command) (ocistate.HookSet, error) {
	nets, conf := splitNames(strings.Join(cmd.StringSlice("network"), ",")), cmd.String("cni-conf")
	if (len(nets) == 0) == (conf == "") {
		return ocistate.HookSet{}, usageErrorf(cmd, "give one of --network or --cni-conf")
	}
	self, err := a.executable()
	if err != nil {
		return ocistate.HookSet{}, fmt.Errorf("find circuit's own path: %w", err)
	}
	var env []string
	if conf != "" {
		if conf, err = filepath.Abs(conf); err != nil {
			return ocistate.HookSet{}, err
		}
		// A typo here would only show up when a container starts.
		if _, err := os.Stat(conf); err != nil {
			return ocistate.HookSet{}, fmt.Errorf("--cni-conf: %w", err)
		}
		env = append(env, "CNI_CONF="+conf)
	} else {
		env = append(env, "CIRCUIT_NETWORK="+strings.Join(nets, ","))
	}
	if ifname := cmd.String("ifname"); ifname != "" {
		env = append(env, "CIRCUIT_IFNAME="+ifname)
	}
	settings, err := parseSettings(cmd)
	if err != nil {
		return ocistate.HookSet{}, err
	}
	for _, kv := range []struct {
		key  string
		vals []string
	}{{"CIRCUIT_PUBLISH", splitEach(cmd.StringSlice("publish"))}, {"CIRCUIT_IP", settings.RequestedIPs},
		{"CIRCUIT_MAC", splitNames(settings.RequestedMAC)}, {"CIRCUIT_ALIAS", settings.Aliases}} {
		if len(kv.vals) > 0 {
			env = append(env, kv.key+"="+strings.Join(kv.vals, ","))
		}
	}
	if len(a.cniFlag) > 0 {
		env = append(env, "CNI_PATH="+strings.Join(a.cniFlag, string(filepath.ListSeparator)))
	}
	if a.g.StateDir != DefaultStateDir {
		env = append(env, "CIRCUIT_STATE="+a.g.StateDir)
	}
	timeout := cmd.Int("timeout")
	if timeout < minHookTimeout {
		return ocistate.HookSet{}, usageErrorf(cmd, "--timeout %d: want at least %d seconds", timeout, minHookTimeout)
	}
	env = append(env, fmt.Sprintf("%s=%d", hookTimeoutEnv, timeout), "PATH="+hookPATH)
	h := specs.Hook{Path: self, Env: env, Timeout: &timeout}
	return ocistate.HookSet{Setup: h, Teardown: h, CreateRuntime: cmd.Bool("create-runtime")}, nil
}

func hookConfigCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: `print the "hooks" block for a runc config.json`,
		Description: `Prints {"hooks": {...}} with a setup hook (prestart, or createRuntime) and a
poststop hook. Merge it into a config with "circuit hook install" or e.g.
jq -s '.[0] * .[1]' config.json <(circuit hook config --network sandbox)`,
		Flags: hookFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 0, 0); err != nil {
				return err
			}
			set, err := a.hookSet(cmd)
			if err != nil {
				return err
			}
			return writeJSON(a.stdout, map[string]specs.Hooks{"hooks": set.Hooks()})
		},
	}
}

func hookInstallCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "install",
		Usage:     "write circuit's hooks into bundles' config.json",
		ArgsUsage: "BUNDLE...",
		Description: `Replaces circuit's own entries (those with this binary's path) and keeps
everything else in config.json as it was. The file is replaced atomically.`,
		Flags: hookFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, -1); err != nil {
				return err
			}
			set, err := a.hookSet(cmd)
			if err != nil {
				return err
			}
			for _, bundle := range cmd.Args().Slice() {
				if err := ocistate.InstallHooks(filepath.Join(bundle, "config.json"), set); err != nil {
					return err
				}
				if _, err := fmt.Fprintf(a.stdout, "hooks installed in %s\n", bundle); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
