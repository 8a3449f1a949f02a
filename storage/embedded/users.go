package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"trawl/storage"
)

const userColumns = `id, app_id, secret_hash, name, created`

// CreateUser stores u. A user with the same ID or AppID is storage.ErrConflict.
func (s *Store) CreateUser(ctx context.Context, u storage.User) error {
	if u.ID == "" || u.AppID == "" {
		return fmt.Errorf("cannot create user %q: id and app id are required", u.ID)
	}
	_, err := s.write.ExecContext(ctx, `INSERT INTO users (`+userColumns+`) VALUES (?, ?, ?, ?, ?)`,
		u.ID, u.AppID, u.SecretHash, u.Name, toMS(u.Created))
	if isConstraint(err) {
		return fmt.Errorf("cannot create user %s: %w", u.ID, storage.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("cannot create user %s: %w", u.ID, err)
	}
	return nil
}

// UserByAppID returns the user with that app id, or storage.ErrNotFound.
func (s *Store) UserByAppID(ctx context.Context, appID string) (storage.User, error) {
	row := s.read.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE app_id = ?`, appID)
	u, err := scanUser(row)
	if err != nil {
		return storage.User{}, fmt.Errorf("cannot get user by app id: %w", err)
	}
	return u, nil
}

// User returns the user with that id, or storage.ErrNotFound.
func (s *Store) User(ctx context.Context, id string) (storage.User, error) {
	row := s.read.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE id = ?`, id)
	u, err := scanUser(row)
	if err != nil {
		return storage.User{}, fmt.Errorf("cannot get user %s: %w", id, err)
	}
	return u, nil
}

// Users returns every user in id order (user ids are time-sortable, so
// oldest first).
func (s *Store) Users(ctx context.Context) ([]storage.User, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+userColumns+` FROM users ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("cannot list users: %w", err)
	}
	defer rows.Close()
	var users []storage.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("cannot list users: %w", err)
		}
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list users: %w", err)
	}
	return users, nil
}

// DeleteUser removes the user with that id, or returns storage.ErrNotFound.
// The user's jobs and events stay: they are the operator's records too.
func (s *Store) DeleteUser(ctx context.Context, id string) error {
	res, err := s.write.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("cannot delete user %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("cannot delete user %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("cannot delete user %s: %w", id, storage.ErrNotFound)
	}
	return nil
}

// rowScanner is the part of *sql.Row and *sql.Rows the scanners need.
type rowScanner interface {
	Scan(dest ...any) error
}

func scanUser(r rowScanner) (storage.User, error) {
	var (
		u       storage.User
		created int64
	)
	err := r.Scan(&u.ID, &u.AppID, &u.SecretHash, &u.Name, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return storage.User{}, storage.ErrNotFound
	}
	if err != nil {
		return storage.User{}, err
	}
	u.Created = fromMS(created)
	return u, nil
}
