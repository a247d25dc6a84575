package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/membership"
)

func newMemberCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "member", Short: "List the cluster's members, or take one out of the ring"}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the members: ring members (live or not) and leaving ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			src := c.Membership()
			members := src.Current().Members()
			if asJSON {
				return writeJSON(g.stdout, struct {
					Health  membership.Health   `json:"health"`
					Members []membership.Member `json:"members"`
				}{src.Health(), members})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tHOST\tZONE\tWEIGHT\tSTATE\tSINCE")
			for _, m := range members {
				since := "-"
				if !m.Since.IsZero() {
					since = m.Since.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\t%s\n", m.ID, m.Addr, m.Host, m.Zone, m.Weight, m.State, since)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Take a member out of the ring at once (etcd membership)",
		Long: `remove takes a member out of the ring without waiting for the ring grace: its
keys go to the next owners now. A member that is still running keeps serving
what it holds and owns nothing (state "leaving") until it restarts, when it
joins again: stop it first to take it out for good.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, cfg, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			r, ok := c.Membership().(membership.Remover)
			if !ok {
				return fmt.Errorf("membership is %s: edit the list of workers in the configuration instead", cfg.Membership.Type)
			}
			m, known := c.Membership().Current().Member(args[0])
			if err := r.Remove(cmd.Context(), args[0]); err != nil {
				return err
			}
			if known && m.State == membership.Live {
				fmt.Fprintf(g.stdout, "%s is out of the ring; it is still running: it serves what it holds, owns nothing, and joins again when it restarts\n", args[0])
				return nil
			}
			fmt.Fprintf(g.stdout, "%s is out of the ring\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, remove)
	return cmd
}
