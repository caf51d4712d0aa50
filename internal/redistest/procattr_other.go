//go:build !linux

package redistest

import "os/exec"

// dieWithParent does nothing where the kernel cannot tie a child's life to
// its parent's; t.Cleanup still kills the server when the test ends.
func dieWithParent(*exec.Cmd) {}
