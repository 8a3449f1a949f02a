package probetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Programs the VNC helpers run (Debian packages tigervnc-standalone-server,
// tigervnc-tools, tightvncserver with xfonts-base, x11vnc, xvfb,
// x11-xserver-utils).
const (
	XtigervncPath = "Xtigervnc"
	XtightvncPath = "Xtightvnc"
	VncpasswdPath = "vncpasswd"
	X11VNCPath    = "x11vnc"
	XvfbPath      = "Xvfb"
	XsetrootPath  = "xsetroot"
)

// VNCOptions describes one VNC server: what it listens on, what it shows
// and what it asks of clients.
type VNCOptions struct {
	Port          int
	Desktop       string // desktop name the server announces
	Width, Height int
	// Background is the root window's colour, "#rrggbb": the pixels a
	// screenshot must show.
	Background string
	// SecurityTypes is TigerVNC's -SecurityTypes list ("None",
	// "VncAuth", "None,TLSNone,TLSVnc,VncAuth", …); x11vnc always runs
	// -nopw.
	SecurityTypes string
	// Password is written with vncpasswd -f into the -PasswordFile of a
	// TigerVNC server that lists VncAuth.
	Password string
	// Args are extra server arguments (-BlacklistThreshold 1, say).
	Args []string
}

// VNCServer is a running VNC server.
type VNCServer struct {
	*Server
	Options VNCOptions
	Port    int
	Addr    string
	Display int
}

// StartTigerVNC runs TigerVNC's X server (Xtigervnc) inside the namespace
// with the root window painted Background; it skips the test when
// TigerVNC or xsetroot is missing.
func (h *Harness) StartTigerVNC(o VNCOptions) *VNCServer {
	h.t.Helper()
	Require(h.t, XtigervncPath, XsetrootPath)
	args := []string{XtigervncPath, "-rfbport", strconv.Itoa(o.Port), "-geometry", fmt.Sprintf("%dx%d", o.Width, o.Height),
		"-depth", "24", "-desktop", o.Desktop, "-noreset", "-nolisten", "tcp", "-SecurityTypes", o.SecurityTypes}
	if strings.Contains(strings.ToLower(o.SecurityTypes), "vnc") || strings.Contains(strings.ToLower(o.SecurityTypes), "plain") {
		Require(h.t, VncpasswdPath)
		pw, err := h.vncPasswordFile(o.Port, o.Password)
		if err != nil {
			h.t.Fatalf("probetest: %v", err)
		}
		args = append(args, "-PasswordFile", pw)
	}
	args = append(args, o.Args...)
	s, display := h.startXServer(fmt.Sprintf("tigervnc-%d", o.Port), args, o.Port)
	h.paintRoot(display, o.Background)
	return &VNCServer{Server: s, Options: o, Port: o.Port, Addr: h.Addr(o.Port), Display: display}
}

// StartTightVNC runs TightVNC's X server (Xtightvnc: security types None
// or VNC authentication, each beside Tight) with the root window painted
// Background; a Password makes it ask for one. It skips the test when
// TightVNC or xsetroot is missing.
func (h *Harness) StartTightVNC(o VNCOptions) *VNCServer {
	h.t.Helper()
	Require(h.t, XtightvncPath, XsetrootPath)
	display, err := freeDisplay()
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	args := []string{XtightvncPath, ":" + strconv.Itoa(display), "-rfbport", strconv.Itoa(o.Port),
		"-geometry", fmt.Sprintf("%dx%d", o.Width, o.Height), "-depth", "24", "-desktop", o.Desktop,
		"-nolisten", "tcp", "-nolock", "-nocursor"}
	if o.Password != "" {
		Require(h.t, VncpasswdPath) // TigerVNC's writes the same obfuscated file
		pw, err := h.vncPasswordFile(o.Port, o.Password)
		if err != nil {
			h.t.Fatalf("probetest: %v", err)
		}
		args = append(args, "-rfbauth", pw)
	}
	s := h.Start(fmt.Sprintf("tightvnc-%d", o.Port), append(args, o.Args...), h.ListenReady(o.Port))
	h.t.Cleanup(func() {
		stopGracefully(s)
		_ = os.Remove(fmt.Sprintf("/tmp/.X11-unix/X%d", display))
	})
	h.paintRoot(display, o.Background)
	return &VNCServer{Server: s, Options: o, Port: o.Port, Addr: h.Addr(o.Port), Display: display}
}

// freeDisplay picks an X display number nobody uses, for X servers that
// cannot pick one themselves (-displayfd).
func freeDisplay() (int, error) {
	for d := 64; d < 512; d++ {
		_, errSock := os.Stat(fmt.Sprintf("/tmp/.X11-unix/X%d", d))
		_, errLock := os.Stat(fmt.Sprintf("/tmp/.X%d-lock", d))
		if os.IsNotExist(errSock) && os.IsNotExist(errLock) {
			return d, nil
		}
	}
	return 0, errors.New("no free X display number in 64..511")
}

// StartX11VNC runs Xvfb with the root window painted Background and
// x11vnc -nopw sharing it; it skips the test when they are missing.
func (h *Harness) StartX11VNC(o VNCOptions) *VNCServer {
	h.t.Helper()
	Require(h.t, XvfbPath, X11VNCPath, XsetrootPath)
	_, display := h.startXServer(fmt.Sprintf("xvfb-%d", o.Port), []string{XvfbPath, "-screen", "0",
		fmt.Sprintf("%dx%dx24", o.Width, o.Height), "-noreset", "-nolisten", "tcp"}, 0)
	h.paintRoot(display, o.Background)
	args := []string{X11VNCPath, "-display", ":" + strconv.Itoa(display), "-rfbport", strconv.Itoa(o.Port),
		"-nopw", "-forever", "-shared", "-desktop", o.Desktop, "-norc", "-noxdamage"}
	s := h.Start(fmt.Sprintf("x11vnc-%d", o.Port), append(args, o.Args...), h.ListenReady(o.Port))
	h.t.Cleanup(func() { stopGracefully(s) })
	return &VNCServer{Server: s, Options: o, Port: o.Port, Addr: h.Addr(o.Port), Display: display}
}

// startXServer runs an X server that picks a free display itself
// (-displayfd) and waits for it, and for port when not 0. It is stopped
// with SIGTERM before the namespace goes, so it removes its lock file and
// socket from the shared /tmp.
func (h *Harness) startXServer(name string, args []string, port int) (*Server, int) {
	h.t.Helper()
	dfd := filepath.Join(h.dir, name+".display")
	argv := append([]string{"/bin/sh", "-c", `f=$1; shift; exec "$@" -displayfd 3 3>"$f"`, "sh", dfd}, args...)
	display := -1
	s := h.Start(name, argv, func(ctx context.Context) error {
		b, err := os.ReadFile(dfd)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return fmt.Errorf("no display number yet (%q, %v)", b, err)
		}
		if display, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("cannot parse the display number %q: %w", b, err)
		}
		if port != 0 {
			return h.ListenReady(port)(ctx)
		}
		return nil
	})
	h.t.Cleanup(func() { stopGracefully(s) })
	return s, display
}

// ListenReady returns a ready check that succeeds once something listens
// on TCP port in the namespace. Unlike DialReady it opens no connection:
// TigerVNC counts connections that end before authentication and bans.
func (h *Harness) ListenReady(port int) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		out, err := h.Exec(ctx, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			return fmt.Errorf("nothing listens on port %d", port)
		}
		return nil
	}
}

// paintRoot sets the root window of display to colour.
func (h *Harness) paintRoot(display int, colour string) {
	h.t.Helper()
	if colour == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Exec(ctx, XsetrootPath, "-display", ":"+strconv.Itoa(display), "-solid", colour); err != nil {
		h.t.Fatalf("probetest: cannot paint the root window: %v", err)
	}
}

// vncPasswordFile writes password obfuscated the way TigerVNC reads it.
func (h *Harness) vncPasswordFile(port int, password string) (string, error) {
	cmd := exec.Command(VncpasswdPath, "-f")
	cmd.Stdin = strings.NewReader(password + "\n")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cannot run vncpasswd -f: %w", err)
	}
	path := filepath.Join(h.dir, fmt.Sprintf("vncpasswd-%d", port))
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return "", fmt.Errorf("cannot write the VNC password file: %w", err)
	}
	return path, nil
}

// stopGracefully sends SIGTERM and waits briefly; teardown SIGKILLs what
// is left.
func stopGracefully(s *Server) {
	if s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
	}
}
