// Package kchan holds the few types the control plane and the loader share
// about the kernel channel table, so that one binding and one usage record
// flow from pkg/control through pkg/loader into the maps and back to the
// admin socket and the CLI without a conversion at each hop. pkg/control
// declares what it needs of the table (control.KernelChannels) in these
// types; pkg/loader implements it; neither imports the other.
package kchan
