// Package cmd is circuit's command line: urfave/cli v3 commands that parse
// their arguments, call the controller.Controller and print the result. The
// work itself happens below the Controller interface.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/controller"
)

// Version and Commit describe the build. main sets them from its own
// -X linker flags (main.version, main.commit) before calling NewApp.
var (
	Version = "dev"
	Commit  = "unknown"
)

// Defaults of the global flags.
const (
	DefaultStateDir = "/var/lib/circuit"
	DefaultRuncRoot = "/run/runc"
)

// defaultCNIDirs follow --cni-path in the plugin search path, before $PATH,
// as the original README promises ("place those binaries somewhere").
var defaultCNIDirs = []string{"/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni"}

// Globals are the global flags after Before made every path absolute.
type Globals struct {
	StateDir string
	CNIPath  []string // the effective plugin search path, in order
	RuncRoot string
	Debug    bool
	Log      *logrus.Logger // writes to the app's stderr
	// LockTimeout and UndoTimeout, when set (hook mode), bound the wait
	// for another circuit process and the undo of half-done work.
	LockTimeout time.Duration
	UndoTimeout time.Duration
}

// Factory opens the Controller a command uses; the app closes it when the
// command is done.
type Factory func(ctx context.Context, g Globals) (controller.Controller, error)

// app carries what the commands share. Everything that touches the process
// (streams, environment, own path) is a field, so tests run in parallel.
type app struct {
	newController Factory
	stdin         io.Reader
	stdout        io.Writer
	stderr        io.Writer
	lookupEnv     func(string) (string, bool)
	executable    func() (string, error)
	isTerminal    func(io.Reader) bool
	now           func() time.Time

	g           Globals  // set by before
	cniFlag     []string // --cni-path as given (made absolute), for hook config
	allCommands bool     // the tree holds every command (newApp)
}

// NewApp builds the circuit command for args (os.Args): only the command
// args name is built, since urfave/cli sets up every command it holds on
// each run and circuit runs on every container start. Help, completion and
// unknown commands get them all. newController is called by each command
// that needs a Controller, after the global flags are parsed.
func NewApp(newController Factory, stdout, stderr io.Writer, stdin io.Reader, args []string) *cli.Command {
	return newApp(&app{
		newController: newController,
		stdin:         stdin,
		stdout:        stdout,
		stderr:        stderr,
		lookupEnv:     os.LookupEnv,
		executable:    selfPath,
		isTerminal:    isTerminal,
		now:           time.Now,
	}, args)
}

// topCommands are circuit's commands, by name, built on demand.
var topCommands = []struct {
	name  string
	build func(*app) *cli.Command
}{
	{"network", networkCommand},
	{"lb", lbCommand},
	{"node", nodeCommand},
	{"hook", hookCommand},
	{"restore", restoreCommand},
	{"gc", gcCommand},
	{"version", versionCommand},
}

// rootStringFlags are the global flags that take a value, so the word after
// them is not a command.
var rootStringFlags = map[string]bool{"state": true, "cni-path": true, "runc-root": true}

// commandAt finds the command args name (args[0] is the program) and its
// index: the first word that is neither a global flag nor a global flag's
// value. ok is false when every command is needed: completion asked for
// (anywhere), or help or "--" before any word.
func commandAt(args []string) (word string, at int, ok bool) {
	if slices.Contains(args, "--generate-shell-completion") {
		return "", 0, false
	}
	for i := 1; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			return "", 0, false
		case strings.HasPrefix(arg, "-"):
			name := strings.TrimLeft(arg, "-")
			if name == "help" || name == "h" {
				return "", 0, false
			}
			if rootStringFlags[name] {
				i++ // its value
			}
		default:
			return arg, i, true
		}
	}
	return "", 0, true
}

// pruneTo keeps, level by level down from c, only the subcommand the next
// word names. A flag, or a word naming none (help, a typo), keeps the level
// whole, for its help and its errors.
func pruneTo(c *cli.Command, words []string) {
	for _, w := range words {
		if strings.HasPrefix(w, "-") {
			return
		}
		i := slices.IndexFunc(c.Commands, func(s *cli.Command) bool { return s.Name == w || slices.Contains(s.Aliases, w) })
		if i < 0 {
			return
		}
		c.Commands = c.Commands[i : i+1]
		c = c.Commands[0]
	}
}

// commandsFor builds the commands args need: the one they name (and of
// its subcommands the ones they name), none when they name none (circuit as
// a hook), every one otherwise. all reports whether every command was built.
func commandsFor(a *app, args []string) (cmds []*cli.Command, all bool) {
	if args != nil {
		if word, at, ok := commandAt(args); ok {
			if word == "" {
				return nil, false
			}
			for _, c := range topCommands {
				if c.name == word {
					cmd := c.build(a)
					pruneTo(cmd, args[at+1:])
					return []*cli.Command{cmd}, false
				}
			}
		}
	}
	for _, c := range topCommands {
		cmds = append(cmds, c.build(a))
	}
	return cmds, true
}

// newApp builds the command tree args need (nil: all of it).
func newApp(a *app, args []string) *cli.Command {
	cmds, all := commandsFor(a, args)
	a.allCommands = all
	root := &cli.Command{
		Name:  "circuit",
		Usage: "CNI networks, QoS and load balancing for runc containers",
		Description: `Run as a runc hook (prestart, createRuntime or poststop) with no command,
circuit reads the OCI state from stdin and connects or disconnects the
container. The hook's environment chooses the network: CNI_CONF (a conf or
conflist file) or CIRCUIT_NETWORK (names, comma separated); the container's
"circuit.network" annotation overrides both. CIRCUIT_IFNAME names the
interface. See "circuit hook config".`,
		Version:               Version,
		HideVersion:           true, // our own --version prints the build like `circuit version`
		EnableShellCompletion: all,
		ConfigureShellCompletionCommand: func(c *cli.Command) {
			c.Hidden = false
			c.Usage = "print a shell completion script (bash, zsh, fish, pwsh)"
			_ = c.Walk(func(c *cli.Command) error { c.OnUsageError = onUsageError; return nil })
		},
		Reader:    a.stdin,
		Writer:    a.stdout,
		ErrWriter: a.stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "state",
				Usage:   "keep the datastore, netns pins and hook.log in `DIR`",
				Value:   DefaultStateDir,
				Sources: a.env("CIRCUIT_STATE"),
			},
			&cli.StringFlag{
				Name:    "cni-path",
				Usage:   "look for CNI plugins in `DIR[:DIR...]`, then " + strings.Join(defaultCNIDirs, ", ") + " and $PATH",
				Sources: a.env("CNI_PATH"),
			},
			&cli.StringFlag{
				Name:  "runc-root",
				Usage: "runc's state `DIR`, to resolve container IDs and PIDs",
				Value: DefaultRuncRoot,
			},
			&cli.BoolFlag{
				Name:  "debug",
				Usage: "log debug messages to stderr",
			},
			&cli.BoolFlag{
				Name:    "version",
				Aliases: []string{"v"},
				Usage:   "print the version",
				Local:   true,
			},
		},
		Before: a.before,
		Action: a.rootAction,
		// Errors go back to main, which prints them once and exits.
		ExitErrHandler: func(context.Context, *cli.Command, error) {},
		Commands:       cmds,
	}
	_ = root.Walk(func(c *cli.Command) error {
		c.OnUsageError = onUsageError
		if len(c.Commands) == 0 {
			// A leaf's positional arguments are names ("help" may be a
			// container); --help still works.
			c.HideHelpCommand = true
		} else if c != root {
			c.Action = groupAction
		}
		return nil
	})
	return root
}

// onUsageError turns cli's parse errors into one line on stderr instead of
// "Incorrect Usage" and a help dump.
func onUsageError(_ context.Context, c *cli.Command, err error, _ bool) error {
	return usageErrorf(c, "%v", err)
}

// before sets up logging and normalises the global flags' paths, so
// everything below sees absolute paths whatever the working directory.
func (a *app) before(ctx context.Context, cmd *cli.Command) (context.Context, error) {
	log := logrus.New()
	log.SetOutput(a.stderr)
	log.SetLevel(logrus.WarnLevel)
	if cmd.Bool("debug") {
		log.SetLevel(logrus.DebugLevel)
	}

	state := cmd.String("state")
	if state == "" {
		return ctx, usageErrorf(cmd, "--state must not be empty")
	}
	var err error
	if state, err = filepath.Abs(state); err != nil {
		return ctx, err
	}
	runcRoot := cmd.String("runc-root")
	if runcRoot == "" {
		return ctx, usageErrorf(cmd, "--runc-root must not be empty")
	}
	if runcRoot, err = filepath.Abs(runcRoot); err != nil {
		return ctx, err
	}
	a.cniFlag = nil
	for _, dir := range filepath.SplitList(cmd.String("cni-path")) {
		if dir == "" {
			continue
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return ctx, err
		}
		a.cniFlag = append(a.cniFlag, dir)
	}
	path, _ := a.lookupEnv("PATH")

	a.g = Globals{
		StateDir: state,
		CNIPath:  searchPath(a.cniFlag, path),
		RuncRoot: runcRoot,
		Debug:    cmd.Bool("debug"),
		Log:      log,
	}
	log.WithFields(logrus.Fields{"state": state, "cni-path": a.g.CNIPath, "runc-root": runcRoot}).Debug("circuit starting")
	return ctx, nil
}

// searchPath is the CNI plugin search path: the given dirs, the usual plugin
// dirs, then $PATH. Relative $PATH entries are skipped: circuit runs as root,
// often as a hook with the bundle as its working directory.
func searchPath(dirs []string, envPath string) []string {
	out := []string{}
	seen := map[string]bool{}
	add := func(d string) {
		d = filepath.Clean(d)
		if !filepath.IsAbs(d) || seen[d] {
			return
		}
		seen[d] = true
		out = append(out, d)
	}
	for _, d := range dirs {
		add(d)
	}
	for _, d := range defaultCNIDirs {
		add(d)
	}
	for _, d := range filepath.SplitList(envPath) {
		if d != "" {
			add(d)
		}
	}
	return out
}

// rootAction runs when no command is given: as a runc hook when stdin
// carries data, otherwise it shows help.
func (a *app) rootAction(ctx context.Context, cmd *cli.Command) error {
	if cmd.Bool("version") {
		return a.printVersion()
	}
	if cmd.Args().Present() {
		return usageErrorf(cmd, "unknown command %q", cmd.Args().First())
	}
	if a.isTerminal(a.stdin) {
		return a.rootHelp(ctx, cmd)
	}
	return a.hookMode(ctx, cmd)
}

// rootHelp shows the help of circuit itself, which lists every command: a
// tree built for a hook has none, so a whole one is built for it.
func (a *app) rootHelp(ctx context.Context, cmd *cli.Command) error {
	if a.allCommands {
		return cli.ShowRootCommandHelp(cmd)
	}
	return newApp(a, nil).Run(ctx, []string{cmd.Name, "--help"})
}

// groupAction serves "circuit network" and friends without a subcommand.
func groupAction(ctx context.Context, cmd *cli.Command) error {
	if cmd.Args().Present() {
		return usageErrorf(cmd, "unknown command %q", cmd.Args().First())
	}
	return cli.ShowSubcommandHelp(cmd)
}

// withController opens the Controller for one command and closes it after.
func (a *app) withController(ctx context.Context, fn func(controller.Controller) error) (err error) {
	ctrl, err := a.newController(ctx, a.g)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ctrl.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(ctrl)
}

// UsageError is a mistake on the command line. It exits with status 2.
type UsageError struct {
	msg string
}

func (e *UsageError) Error() string { return e.msg }

// ExitCode makes UsageError a cli.ExitCoder.
func (e *UsageError) ExitCode() int { return 2 }

// usageErrorf names the command, since the message is all the user sees.
func usageErrorf(cmd *cli.Command, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if path := cmd.Path(); len(path) > 1 {
		msg = strings.Join(path[1:], " ") + ": " + msg
	}
	return &UsageError{msg: msg}
}

// ExitCode is the process exit status for an error the app returned: 0 for
// nil, 2 for usage errors, the code of any other cli.ExitCoder, else 1.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return 1
}

// checkArgs enforces a command's positional argument count.
func checkArgs(cmd *cli.Command, min, max int) error {
	n := cmd.NArg()
	switch {
	case n < min:
		return usageErrorf(cmd, "missing arguments: want %s", cmd.ArgsUsage)
	case max >= 0 && n > max:
		return usageErrorf(cmd, "too many arguments: want %s, got %d", cmd.ArgsUsage, n)
	}
	return nil
}

// oneOf checks a flag's value against its allowed values.
func oneOf(cmd *cli.Command, flag string, allowed ...string) (string, error) {
	v := cmd.String(flag)
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", usageErrorf(cmd, "--%s %q: want one of %s", flag, v, strings.Join(allowed, ", "))
}

// envSource feeds a flag from the app's environment, not os directly, so
// tests can run in parallel with their own environments.
type envSource struct {
	key    string
	lookup func(string) (string, bool)
}

func (a *app) env(key string) cli.ValueSourceChain {
	return cli.NewValueSourceChain(&envSource{key: key, lookup: func(k string) (string, bool) { return a.lookupEnv(k) }})
}

func (e *envSource) Lookup() (string, bool) { return e.lookup(e.key) }
func (e *envSource) IsFromEnv() bool        { return true }
func (e *envSource) Key() string            { return e.key }
func (e *envSource) String() string         { return fmt.Sprintf("environment variable %q", e.key) }
func (e *envSource) GoString() string       { return fmt.Sprintf("&envSource{key:%q}", e.key) }

// selfPath is the absolute, symlink-free path of this binary, as hooks must
// name it.
func selfPath() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(p)
}

// isTerminal reports whether r is a terminal (or has no usable fd), in which
// case circuit was run by a person rather than as a hook.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return true
	}
	return fi.Mode()&os.ModeCharDevice != 0
}
