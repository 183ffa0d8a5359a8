//! Users, roles and password hashes (Argon2id; the hash string carries its own salt/params).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::row::RowExt;
use crate::{now_ms, Catalog};

/// What a user may do (the privileges of each role are the server's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// A user of the image service: manages their own images and image sets and boots them on
    /// machines; sees nothing of the backups.
    User,
    /// Run jobs, restore, load tapes.
    Operator,
    /// Everything, including users and configuration.
    Admin,
}

impl Role {
    /// The lowercase name stored in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::User => "user",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "user" => Ok(Self::User),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(CatalogError::Invalid(format!("unknown role {s:?} (admin, operator, viewer, user)"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user account (never carries the password hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// E-mail address (the image service's users have one).
    pub email: Option<String>,
    /// Disabled users cannot log in and their tokens stop working.
    pub disabled: bool,
    /// A TOTP second factor is required at login.
    pub totp: bool,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl User {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            username: r.str("username")?,
            role: r.str("role")?.parse()?,
            email: r.opt_str("email")?,
            disabled: r.flag("disabled")?,
            totp: r.flag("totp")?,
            created_at: r.i64("created_at")?,
        })
    }
}

/// Argon2id hash of a password on a blocking thread (tens of ms of CPU and 19 MiB: never on
/// the async workers that serve other requests).
async fn hash_blocking(password: &str) -> Result<String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| CatalogError::Invalid(format!("hashing task failed: {e}")))?
}

/// [`verify_password`] on a blocking thread.
async fn verify_blocking(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.unwrap_or(false)
}

/// Argon2id hash of a password, in PHC string form.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CatalogError::Invalid(format!("cannot hash password: {e}")))
}

/// Check a password against a PHC hash; false on any mismatch or malformed hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Usernames are short, printable, and safe in paths and logs.
fn validate_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "invalid username {name:?}: 1-64 characters of letters, digits, '.', '_', '-', '@'"
        )))
    }
}

/// An e-mail address is one line with one `@` between non-empty parts.
fn validate_email(e: &str) -> Result<()> {
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_control() || c.is_whitespace())
        && e.split_once('@').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!("invalid e-mail address {e:?}")))
    }
}

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

fn validate_password(p: &str) -> Result<()> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(CatalogError::Invalid(format!("password must be at least {MIN_PASSWORD_LEN} characters")));
    }
    Ok(())
}

const USER_COLS: &str =
    "id, username, role, email, disabled, CAST(CASE WHEN totp_secret IS NULL THEN 0 ELSE 1 END AS BIGINT) AS totp, created_at";

impl Catalog {
    /// Create a user with a password.
    pub async fn create_user(&self, username: &str, password: &str, role: Role) -> Result<User> {
        validate_username(username)?;
        validate_password(password)?;
        let hash = hash_blocking(password).await?;
        let r = sqlx::query(&format!(
            "INSERT INTO users (username, password_hash, role, disabled, created_at) VALUES ($1, $2, $3, 0, $4) \
             RETURNING {USER_COLS}"
        ))
        .bind(username)
        .bind(hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("user {username:?} already exists"))?;
        User::from_row(&row)
    }

    /// Create a user who cannot log in until given a password (the image service's
    /// `POST /user` makes users by name and e-mail only); the stored hash matches nothing.
    pub async fn create_user_without_password(&self, username: &str, email: Option<&str>, role: Role) -> Result<User> {
        validate_username(username)?;
        if let Some(e) = email {
            validate_email(e)?;
        }
        let r = sqlx::query(&format!(
            "INSERT INTO users (username, password_hash, role, email, disabled, created_at) \
             VALUES ($1, '!', $2, $3, 0, $4) RETURNING {USER_COLS}"
        ))
        .bind(username)
        .bind(role.as_str())
        .bind(email)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("user {username:?} already exists"))?;
        User::from_row(&row)
    }

    /// Set or clear a user's e-mail address.
    pub async fn set_email(&self, id: i64, email: Option<&str>) -> Result<User> {
        if let Some(e) = email {
            validate_email(e)?;
        }
        sqlx::query("UPDATE users SET email = $1 WHERE id = $2").bind(email).bind(id).execute(&self.pool).await?;
        self.get_user(id).await
    }

    /// How many users exist (first start creates `admin` when there are none).
    pub async fn count_users(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// All users by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows =
            sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY username")).fetch_all(&self.pool).await?;
        rows.iter().map(User::from_row).collect()
    }

    /// One user by id.
    pub async fn get_user(&self, id: i64) -> Result<User> {
        self.one_by_id(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"), id, "user", User::from_row).await
    }

    /// One user by name.
    pub async fn get_user_by_name(&self, username: &str) -> Result<User> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE username = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("user {username:?}")))?;
        User::from_row(&row)
    }

    /// Check a login. `None` for an unknown user, a wrong password or a disabled account —
    /// the caller cannot tell which, and neither can a guesser. Unknown users still cost one
    /// hash so timing does not reveal which names exist.
    pub async fn check_login(&self, username: &str, password: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!("SELECT {USER_COLS}, password_hash FROM users WHERE username = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            let _ = verify_blocking(password, DUMMY_HASH).await;
            return Ok(None);
        };
        let hash = row.str("password_hash")?;
        let user = User::from_row(&row)?;
        Ok((verify_blocking(password, &hash).await && !user.disabled).then_some(user))
    }

    /// Change a user's password.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<()> {
        validate_password(password)?;
        let hash = hash_blocking(password).await?;
        let n = sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
            .bind(hash)
            .bind(username)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("user {username:?}")));
        }
        Ok(())
    }

    /// Change role and/or disabled flag. Refuses to leave no enabled admin.
    pub async fn update_user(&self, id: i64, role: Option<Role>, disabled: Option<bool>) -> Result<User> {
        let user = self.get_user(id).await?;
        let new_role = role.unwrap_or(user.role);
        let new_disabled = disabled.unwrap_or(user.disabled);
        if user.role == Role::Admin && !user.disabled && (new_role != Role::Admin || new_disabled) {
            self.ensure_other_admin(id).await?;
        }
        sqlx::query("UPDATE users SET role = $1, disabled = $2 WHERE id = $3")
            .bind(new_role.as_str())
            .bind(i64::from(new_disabled))
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_user(id).await
    }

    /// Delete a user (and, by cascade, their tokens). Refuses to delete the last admin.
    pub async fn delete_user(&self, id: i64) -> Result<()> {
        let user = self.get_user(id).await?;
        if user.role == Role::Admin && !user.disabled {
            self.ensure_other_admin(id).await?;
        }
        sqlx::query("DELETE FROM tokens WHERE user_id = $1").bind(id).execute(&self.pool).await?;
        sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn ensure_other_admin(&self, except: i64) -> Result<()> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id <> $1")
                .bind(except)
                .fetch_one(&self.pool)
                .await?;
        if n == 0 {
            return Err(CatalogError::Conflict("refusing to remove or demote the last enabled admin".into()));
        }
        Ok(())
    }
}

/// A valid hash of a random password, verified against for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Tt0e8bUVjB1TDRzEJxjBEBV1F8T0P4w2r2JdRCGZbBo";

/// A user's second factor, as the server needs it to check a code.
#[derive(Debug, Clone, Default)]
pub struct TotpState {
    /// The confirmed secret (base32), when the factor is on.
    pub secret: Option<String>,
    /// A secret being set up, not yet confirmed by a code.
    pub pending: Option<String>,
    /// The last time step a code was accepted for.
    pub last_step: Option<i64>,
}

impl Catalog {
    /// The second-factor state of a user.
    pub async fn totp_state(&self, user_id: i64) -> Result<TotpState> {
        let row = sqlx::query("SELECT totp_secret, totp_pending, totp_last_step FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("user {user_id}")))?;
        Ok(TotpState {
            secret: row.opt_str("totp_secret")?,
            pending: row.opt_str("totp_pending")?,
            last_step: row.opt_i64("totp_last_step")?,
        })
    }

    /// Start setting up a second factor (replaces one being set up; the active one stays
    /// until the new one is confirmed).
    pub async fn set_totp_pending(&self, user_id: i64, secret: &str) -> Result<()> {
        sqlx::query("UPDATE users SET totp_pending = $1 WHERE id = $2")
            .bind(secret)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Make the pending secret the active one, remembering the step its confirming code used.
    pub async fn confirm_totp(&self, user_id: i64, step: i64) -> Result<()> {
        sqlx::query(
            "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = $1 \
             WHERE id = $2 AND totp_pending IS NOT NULL",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Remember the step of an accepted code; false when it (or a later one) was used already,
    /// so one code never logs in twice.
    pub async fn use_totp_step(&self, user_id: i64, step: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Turn the second factor off.
    pub async fn disable_totp(&self, user_id: i64) -> Result<()> {
        sqlx::query("UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = NULL WHERE id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
