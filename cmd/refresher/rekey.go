package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/model"
)

func rekeyCmd(e *env) *cobra.Command {
	var lockTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "rekey",
		Short: "Re-encrypt every credential's tokens under the first key of REFRESHER_ENCRYPTION_KEYS",
		Long: `Re-encrypt the token columns of every credential under the first key listed in
REFRESHER_ENCRYPTION_KEYS: plaintext rows (encryption just switched on) and rows sealed
with an older key. Each page of rows is locked like a refresh, so it is safe to run
while the fleet works.

Rotating a key without downtime:
  1. REFRESHER_ENCRYPTION_KEYS=new:<key>,old:<key> on every process (new encrypts, both decrypt)
  2. refresher rekey
  3. REFRESHER_ENCRYPTION_KEYS=new:<key> everywhere`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if lockTimeout <= 0 {
				return usageError{fmt.Errorf("--lock-timeout %s: must be positive", lockTimeout)}
			}
			keyring, err := config.Keyring()
			if err != nil {
				return err
			}
			if keyring == nil {
				return config.Errorf("REFRESHER_ENCRYPTION_KEYS is not set: rekey needs the key to encrypt with")
			}
			db, err := openDB(cmd.Context(), 2)
			if err != nil {
				return err
			}
			defer db.Close()
			res, err := model.Rekey(cmd.Context(), db, keyring, lockTimeout, nil)
			fmt.Fprintf(e.stdout, "examined=%d resealed=%d key=%s\n", res.Rows, res.Resealed, keyring.PrimaryID())
			return err
		},
	}
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 5*time.Second, "wait for rows locked by a refresh before retrying the page")
	return cmd
}
