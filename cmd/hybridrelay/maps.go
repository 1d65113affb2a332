package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

func init() {
	register(&cli.Command{
		Name:  "maps",
		Usage: "inspect the kernel fast path's maps and the daemon's allocations",
		Subcommands: []*cli.Command{
			{
				Name:  "dump",
				Usage: "print channels, peers or allocations with readable addresses and lifetimes",
				Description: `channels and peers are read from the maps pinned under --bpffs (the daemon may
be running or not); when nothing is pinned there, from the running daemon over
its admin socket. allocations always come from the daemon.`,
				Subcommands: []*cli.Command{
					{
						Name:   "channels",
						Usage:  "the kernel's channel table: client, listener, relay, peer, channel, remaining lifetime, counters of both directions",
						Flags:  []cli.Flag{jsonFlag(), bpffsFlag(), adminSocketFlag()},
						Action: func(c *cli.Context) error { return mapsDumpAction(c, "channels") },
					},
					{
						Name:   "peers",
						Usage:  "the peer->client direction: relay address and peer to client and channel",
						Flags:  []cli.Flag{jsonFlag(), bpffsFlag(), adminSocketFlag()},
						Action: func(c *cli.Context) error { return mapsDumpAction(c, "peers") },
					},
					{
						Name:   "allocations",
						Usage:  "the daemon's allocations with their permissions and channels",
						Flags:  []cli.Flag{jsonFlag(), adminSocketFlag()},
						Action: func(c *cli.Context) error { return mapsDumpAction(c, "allocations") },
					},
				},
			},
			{
				Name:  "unpin",
				Usage: "remove the pinned maps and links of a stopped daemon (detaches its XDP program)",
				Description: `A daemon stopped with a state file leaves its maps and links pinned so the next
start re-adopts them, and the XDP program keeps forwarding bound channels until
their lifetimes end. unpin removes that state for good. It refuses while a
daemon answers on the admin socket.`,
				Flags:  []cli.Flag{bpffsFlag(), adminSocketFlag()},
				Action: mapsUnpinAction,
			},
		},
	})
}

func mapsDumpAction(c *cli.Context, what string) error {
	if c.Args().Len() > 0 {
		return usageErrorf("maps dump %s takes no arguments, got %q", what, c.Args().First())
	}
	out := c.App.Writer
	switch what {
	case "channels", "peers":
		chans, source, err := readChannels(c.String("bpffs"), c.String("admin-socket"))
		if err != nil {
			return err
		}
		sortChannels(chans)
		if what == "peers" {
			return dumpPeers(out, chans, source, c.Bool("json"))
		}
		return dumpChannels(out, chans, source, c.Bool("json"))
	case "allocations":
		cl, err := admin.Dial(c.String("admin-socket"))
		if err != nil {
			return err
		}
		defer cl.Close()
		var allocs []control.AllocationInfo
		if err := cl.Call("allocations", &allocs); err != nil {
			return err
		}
		sort.Slice(allocs, func(i, j int) bool {
			return allocs[i].Client.String()+allocs[i].Transport < allocs[j].Client.String()+allocs[j].Transport
		})
		if c.Bool("json") {
			return writeJSON(out, allocs)
		}
		renderAllocations(out, allocs, time.Now())
		return nil
	}
	return fmt.Errorf("maps dump: unknown table %q", what)
}

// readChannels reads the kernel channel table from the pins, or from the
// daemon when nothing is pinned (its pins may be private to its mount
// namespace).
func readChannels(pins, sock string) ([]admin.Channel, string, error) {
	x, err := loader.OpenPinned(pins)
	if err == nil {
		defer x.Close()
		chans, err := admin.ChannelsFromLoader(x, time.Now())
		return chans, "pinned maps in " + pins, err
	}
	if !errors.Is(err, loader.ErrNoPins) {
		return nil, "", err
	}
	cl, derr := admin.Dial(sock)
	if derr != nil {
		if errNoDaemon(derr) {
			return nil, "", fmt.Errorf("%v, and no daemon answers on %s", err, sock)
		}
		return nil, "", derr
	}
	defer cl.Close()
	var chans []admin.Channel
	if err := cl.Call("channels", &chans); err != nil {
		return nil, "", err
	}
	return chans, "daemon on " + sock, nil
}

func sortChannels(cs []admin.Channel) {
	sort.Slice(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if c := a.Relay.Compare(b.Relay); c != 0 {
			return c < 0
		}
		if a.Number != b.Number {
			return a.Number < b.Number
		}
		return a.Client.Compare(b.Client) < 0
	})
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// lifetime renders a remaining lifetime in seconds: 9m59s, or "expired".
func lifetime(sec float64) string {
	if sec <= 0 {
		return "expired"
	}
	return (time.Duration(sec) * time.Second).String()
}

func dumpChannels(w io.Writer, cs []admin.Channel, source string, asJSON bool) error {
	if asJSON {
		if cs == nil {
			cs = []admin.Channel{}
		}
		return writeJSON(w, cs)
	}
	fmt.Fprintf(w, "%d channels (%s)\n", len(cs), source)
	if len(cs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANNEL\tCLIENT\tLISTENER\tRELAY\tPEER\tEXPIRES IN\tTO PEER pkts/bytes\tTO CLIENT pkts/bytes\tFLAGS")
	for _, c := range cs {
		var flags []string
		if !c.PeerEntry {
			flags = append(flags, "no-peer-entry")
		}
		if c.DontFragment {
			flags = append(flags, "df")
		}
		if len(flags) == 0 {
			flags = []string{"-"}
		}
		fmt.Fprintf(tw, "0x%04x\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%s\n", c.Number, c.Client, c.Listener, c.Relay, c.Peer,
			lifetime(c.ExpiresIn), c.ToPeerPackets, c.ToPeerBytes, c.ToClientPackets, c.ToClientBytes, strings.Join(flags, ","))
	}
	return tw.Flush()
}

// peerEntry is the peer->client direction of a channel.
type peerEntry struct {
	Relay           netip.AddrPort `json:"relay"`
	Peer            netip.AddrPort `json:"peer"`
	Client          netip.AddrPort `json:"client"`
	Listener        netip.AddrPort `json:"listener"`
	Number          uint16         `json:"channel"`
	ExpiresIn       float64        `json:"expires_in_seconds"`
	ToClientPackets uint64         `json:"to_client_packets"`
	ToClientBytes   uint64         `json:"to_client_bytes"`
}

func dumpPeers(w io.Writer, cs []admin.Channel, source string, asJSON bool) error {
	peers := []peerEntry{}
	missing := 0
	for _, c := range cs {
		if !c.PeerEntry {
			missing++
			continue
		}
		peers = append(peers, peerEntry{Relay: c.Relay, Peer: c.Peer, Client: c.Client, Listener: c.Listener, Number: c.Number,
			ExpiresIn: c.ExpiresIn, ToClientPackets: c.ToClientPackets, ToClientBytes: c.ToClientBytes})
	}
	if asJSON {
		return writeJSON(w, peers)
	}
	fmt.Fprintf(w, "%d peer entries (%s)\n", len(peers), source)
	if missing > 0 {
		fmt.Fprintf(w, "warning: %d channels have no peer->client entry (their peer traffic goes to userspace)\n", missing)
	}
	if len(peers) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RELAY\tPEER\t->\tCLIENT\tLISTENER\tCHANNEL\tEXPIRES IN\tTO CLIENT pkts/bytes")
	for _, p := range peers {
		fmt.Fprintf(tw, "%s\t%s\t->\t%s\t%s\t0x%04x\t%s\t%d/%d\n", p.Relay, p.Peer, p.Client, p.Listener, p.Number,
			lifetime(p.ExpiresIn), p.ToClientPackets, p.ToClientBytes)
	}
	return tw.Flush()
}

func renderAllocations(w io.Writer, as []control.AllocationInfo, now time.Time) {
	fmt.Fprintf(w, "%d allocations\n", len(as))
	for _, a := range as {
		var relays []string
		for _, r := range a.Relays {
			relays = append(relays, r.String())
		}
		fmt.Fprintf(w, "\n%s %s  user %q  relay %s  expires in %s  to peer %d/%d  to client %d/%d (pkts/bytes)\n",
			a.Transport, a.Client, a.Username, strings.Join(relays, ","), lifetime(a.Expires.Sub(now).Seconds()),
			a.ToPeer.Packets, a.ToPeer.Bytes, a.ToClient.Packets, a.ToClient.Bytes)
		for _, p := range a.Permissions {
			fmt.Fprintf(w, "  permission %s  expires in %s\n", p.Peer, lifetime(p.Expires.Sub(now).Seconds()))
		}
		for _, c := range a.Channels {
			where := "userspace"
			if c.Offloaded {
				where = fmt.Sprintf("kernel (to peer %d/%d, to client %d/%d)", c.Kernel.ToPeerPackets, c.Kernel.ToPeerBytes,
					c.Kernel.ToClientPackets, c.Kernel.ToClientBytes)
			}
			fmt.Fprintf(w, "  channel 0x%04x -> %s  expires in %s  %s\n", c.Number, c.Peer, lifetime(c.Expires.Sub(now).Seconds()), where)
		}
	}
}

func mapsUnpinAction(c *cli.Context) error {
	dir := c.String("bpffs")
	if cl, err := admin.Dial(c.String("admin-socket")); err == nil {
		cl.Close()
		return fmt.Errorf("a daemon answers on %s; stop it first (its own shutdown unpins)", c.String("admin-socket"))
	}
	x, err := loader.OpenPinned(dir)
	if err != nil {
		if errors.Is(err, loader.ErrNoPins) {
			if _, serr := os.Stat(dir); serr == nil {
				// Links without maps (an interrupted run): remove them too.
				if err := os.RemoveAll(dir); err != nil {
					return fmt.Errorf("unpin: %w", err)
				}
				fmt.Fprintf(c.App.Writer, "removed %s\n", dir)
				return nil
			}
		}
		return err
	}
	n := x.Len() // the index the loader rebuilt from the maps
	// pkg/loader pins one link per interface as link_<ifindex>; removing
	// the pin of a link nobody else holds detaches the program.
	links, _ := filepath.Glob(filepath.Join(dir, "link_*"))
	err = x.Unpin()
	x.Close()
	if err != nil {
		return fmt.Errorf("unpin: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "removed %s (%d channels, %d XDP links detached)\n", dir, n, len(links))
	return nil
}
