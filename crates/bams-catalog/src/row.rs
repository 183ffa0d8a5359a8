//! Typed access to `AnyRow` columns, so each model maps its row in a few readable lines.

use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{CatalogError, Result};

pub(crate) trait RowExt {
    fn i64(&self, col: &str) -> Result<i64>;
    fn opt_i64(&self, col: &str) -> Result<Option<i64>>;
    fn str(&self, col: &str) -> Result<String>;
    fn str_at(&self, idx: usize) -> Result<String>;
    fn opt_str(&self, col: &str) -> Result<Option<String>>;
    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.i64(col)? != 0)
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        let s = self.str(col)?;
        serde_json::from_str(&s).map_err(|e| CatalogError::Invalid(format!("column {col}: bad JSON: {e}")))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        match self.opt_str(col)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| CatalogError::Invalid(format!("column {col}: bad JSON: {e}"))),
        }
    }
}

impl RowExt for AnyRow {
    fn i64(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i64, _>(col)?)
    }
    fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn str(&self, col: &str) -> Result<String> {
        Ok(self.try_get::<String, _>(col)?)
    }
    fn opt_str(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(col)?)
    }
    fn str_at(&self, idx: usize) -> Result<String> {
        Ok(self.try_get::<String, _>(idx)?)
    }
}

/// JSON text for a column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Serde adapter: Unix milliseconds in the database, RFC 3339 in the API.
pub mod time_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize milliseconds as an RFC 3339 string.
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(*ms))
    }

    /// Parse an RFC 3339 string into milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s).map(|t| t.timestamp_millis()).map_err(serde::de::Error::custom)
    }

    /// Milliseconds → RFC 3339 (UTC).
    pub fn rfc3339(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// The same for optional times.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialize optional milliseconds.
        pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
                None => s.serialize_none(),
            }
        }

        /// Parse optional RFC 3339.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                chrono::DateTime::parse_from_rfc3339(&s).map(|t| t.timestamp_millis()).map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

/// A bound value for dynamically built filters.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    Str(String),
}

/// Builds `WHERE a = $1 AND b < $2` with `$N` placeholders, which both SQLite and PostgreSQL
/// accept (sqlx's `QueryBuilder<Any>` writes `?`, which PostgreSQL rejects).
#[derive(Default)]
pub(crate) struct Filter {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Filter {
    /// Add a clause whose single placeholder is written as `{}`.
    pub(crate) fn push(&mut self, clause: &str, arg: Arg) -> &mut Self {
        self.args.push(arg);
        self.clauses.push(clause.replace("{}", &format!("${}", self.args.len())));
        self
    }

    /// Next placeholder for a trailing argument (e.g. LIMIT).
    pub(crate) fn next_arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// `WHERE …` or nothing.
    pub(crate) fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// Bind all arguments, in order, to a query.
    pub(crate) fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Str(s) => q.bind(s.clone()),
            };
        }
        q
    }
}

impl Filter {
    /// Add a clause whose placeholders were taken with [`Filter::next_arg`].
    pub(crate) fn push_raw(&mut self, clause: &str) -> &mut Self {
        self.clauses.push(clause.to_string());
        self
    }
}

/// SQL returning the rows of `inner` (a SELECT of `cols`) as one JSON array in a single row and
/// column. Fetching one value instead of N rows matters: each row costs a thread hand-off in
/// sqlx's SQLite driver and conversion work in its `Any` layer. Order is not guaranteed; callers
/// sort.
pub(crate) fn json_rows(backend: crate::Backend, cols: &[&str], inner: &str) -> String {
    let pairs: Vec<String> = cols.iter().map(|c| format!("'{c}', t.{c}")).collect();
    match backend {
        crate::Backend::Sqlite => {
            format!("SELECT COALESCE(json_group_array(json_object({})), '[]') FROM ({inner}) AS t", pairs.join(", "))
        }
        crate::Backend::Postgres => {
            format!(
                "SELECT COALESCE(json_agg(json_build_object({})), '[]')::text FROM ({inner}) AS t",
                pairs.join(", ")
            )
        }
    }
}

/// Parse the JSON array produced by [`json_rows`].
pub(crate) fn parse_json_rows<T: DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    serde_json::from_str(text).map_err(|e| CatalogError::Invalid(format!("catalog JSON rows: {e}")))
}
