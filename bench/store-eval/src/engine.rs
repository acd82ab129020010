//! The two stores behind one small interface: four tables of byte keys and values, an atomic
//! batch of puts and deletes committed with or without an fsync, full scans and point reads.

use std::path::Path;

/// brokk's tables. Keys are big-endian so that byte order is numeric order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// session id (u64) -> session metadata
    Sessions,
    /// session id (u64) ++ seq (u64) -> message id (u64)
    Queues,
    /// message id (u64) -> payload
    Messages,
    /// small bookkeeping keys (the crash test's last batch number)
    Meta,
}

pub const TABLES: [Table; 4] = [Table::Sessions, Table::Queues, Table::Messages, Table::Meta];

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Queues => "queues",
            Table::Messages => "messages",
            Table::Meta => "meta",
        }
    }
}

pub enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Del(Table, Vec<u8>),
}

/// Which store, and how a durable commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// fjall, durable commit = journal `fsync` (`PersistMode::SyncAll`)
    FjallSyncAll,
    /// fjall, durable commit = journal `fdatasync` (`PersistMode::SyncData`)
    FjallSyncData,
    /// fjall with SyncAll and less memory: 8 MiB memtables (default 64 MiB per keyspace) and
    /// 64 MiB of journals (default 512 MiB)
    FjallSmall,
    /// redb, `Durability::Immediate`, default 1-phase commit
    Redb,
    /// redb, `Durability::Immediate` with quick repair (2-phase commit, allocator state saved)
    RedbQuickRepair,
}

impl Engine {
    pub fn parse(s: &str) -> Option<Engine> {
        Some(match s {
            "fjall" => Engine::FjallSyncAll,
            "fjall-syncdata" => Engine::FjallSyncData,
            "fjall-small" => Engine::FjallSmall,
            "redb" => Engine::Redb,
            "redb-quickrepair" => Engine::RedbQuickRepair,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Engine::FjallSyncAll => "fjall",
            Engine::FjallSyncData => "fjall-syncdata",
            Engine::FjallSmall => "fjall-small",
            Engine::Redb => "redb",
            Engine::RedbQuickRepair => "redb-quickrepair",
        }
    }
    pub fn is_fjall(self) -> bool {
        matches!(
            self,
            Engine::FjallSyncAll | Engine::FjallSyncData | Engine::FjallSmall
        )
    }
}

pub type Res<T> = Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

pub trait Store: Send {
    /// Commits `ops` atomically; with `durable`, the commit returns once they are on disk.
    fn commit(&mut self, ops: &[Op], durable: bool) -> Res<()>;
    /// Calls `f` for every entry of `table` in key order; returns the entry count.
    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64>;
    /// Entries with `lo <= key < hi`, in key order.
    fn range(
        &self,
        table: Table,
        lo: &[u8],
        hi: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Res<u64>;
    fn get(&self, table: Table, key: &[u8]) -> Res<Option<Vec<u8>>>;
    /// fjall: moves the memtables into table files (so a store has both journal and tables).
    fn flush(&self) -> Res<()>;
}

/// Options common to both stores.
#[derive(Clone, Copy)]
pub struct OpenOptions {
    pub cache_bytes: u64,
    /// redb: verify every page checksum when opening (`set_check_integrity_on_open`).
    pub check_integrity: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: 64 << 20,
            check_integrity: false,
        }
    }
}

pub fn open(engine: Engine, dir: &Path, opts: OpenOptions) -> Res<Box<dyn Store + Send>> {
    std::fs::create_dir_all(dir).map_err(err)?;
    if engine.is_fjall() {
        Ok(Box::new(FjallStore::open(engine, dir, opts)?))
    } else {
        Ok(Box::new(RedbStore::open(engine, dir, opts)?))
    }
}

pub struct FjallStore {
    db: fjall::Database,
    keyspaces: Vec<fjall::Keyspace>,
    mode: fjall::PersistMode,
}

impl FjallStore {
    fn open(engine: Engine, dir: &Path, opts: OpenOptions) -> Res<Self> {
        let small = engine == Engine::FjallSmall;
        let mut builder = fjall::Database::builder(dir).cache_size(opts.cache_bytes);
        if small {
            builder = builder.max_journaling_size(64 << 20);
        }
        let db = builder.open().map_err(err)?;
        let mut keyspaces = Vec::new();
        for t in TABLES {
            let options = || {
                let o = fjall::KeyspaceCreateOptions::default();
                if small {
                    o.max_memtable_size(8 << 20)
                } else {
                    o
                }
            };
            keyspaces.push(db.keyspace(t.name(), options).map_err(err)?);
        }
        let mode = if engine == Engine::FjallSyncData {
            fjall::PersistMode::SyncData
        } else {
            fjall::PersistMode::SyncAll
        };
        Ok(FjallStore {
            db,
            keyspaces,
            mode,
        })
    }
    fn ks(&self, t: Table) -> &fjall::Keyspace {
        &self.keyspaces[t as usize]
    }
}

impl Store for FjallStore {
    fn commit(&mut self, ops: &[Op], durable: bool) -> Res<()> {
        let mut batch = self.db.batch().durability(durable.then_some(self.mode));
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.insert(self.ks(*t), k.as_slice(), v.as_slice()),
                Op::Del(t, k) => batch.remove(self.ks(*t), k.as_slice()),
            }
        }
        batch.commit().map_err(err)
    }
    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64> {
        let mut n = 0;
        for guard in self.ks(table).iter() {
            let (k, v) = guard.into_inner().map_err(err)?;
            f(&k, &v);
            n += 1;
        }
        Ok(n)
    }
    fn range(
        &self,
        table: Table,
        lo: &[u8],
        hi: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Res<u64> {
        let mut n = 0;
        for guard in self.ks(table).range(lo..hi) {
            let (k, v) = guard.into_inner().map_err(err)?;
            f(&k, &v);
            n += 1;
        }
        Ok(n)
    }
    fn get(&self, table: Table, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.ks(table).get(key).map_err(err)?.map(|v| v.to_vec()))
    }
    fn flush(&self) -> Res<()> {
        for ks in &self.keyspaces {
            ks.rotate_memtable_and_wait().map_err(err)?;
        }
        Ok(())
    }
}

type RedbTable = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;

const REDB_TABLES: [RedbTable; 4] = [
    redb::TableDefinition::new("sessions"),
    redb::TableDefinition::new("queues"),
    redb::TableDefinition::new("messages"),
    redb::TableDefinition::new("meta"),
];

pub struct RedbStore {
    db: redb::Database,
    quick_repair: bool,
}

/// The single file redb keeps everything in.
pub const REDB_FILE: &str = "store.redb";

impl RedbStore {
    fn open(engine: Engine, dir: &Path, opts: OpenOptions) -> Res<Self> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(opts.cache_bytes as usize);
        builder.set_check_integrity_on_open(opts.check_integrity);
        let db = builder.create(dir.join(REDB_FILE)).map_err(err)?;
        let mut store = RedbStore {
            db,
            quick_repair: engine == Engine::RedbQuickRepair,
        };
        // Tables must exist before a read transaction can open them.
        store.commit(&[], true)?;
        Ok(store)
    }
}

impl Store for RedbStore {
    fn commit(&mut self, ops: &[Op], durable: bool) -> Res<()> {
        let mut tx = self.db.begin_write().map_err(err)?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        tx.set_durability(durability).map_err(err)?;
        tx.set_quick_repair(self.quick_repair);
        {
            let mut tables = Vec::new();
            for def in REDB_TABLES {
                tables.push(tx.open_table(def).map_err(err)?);
            }
            for op in ops {
                match op {
                    Op::Put(t, k, v) => {
                        tables[*t as usize]
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(err)?;
                    }
                    Op::Del(t, k) => {
                        tables[*t as usize].remove(k.as_slice()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }
    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(REDB_TABLES[table as usize]).map_err(err)?;
        let mut n = 0;
        for entry in t.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            f(k.value(), v.value());
            n += 1;
        }
        Ok(n)
    }
    fn range(
        &self,
        table: Table,
        lo: &[u8],
        hi: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Res<u64> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(REDB_TABLES[table as usize]).map_err(err)?;
        let mut n = 0;
        for entry in t.range(lo..hi).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            f(k.value(), v.value());
            n += 1;
        }
        Ok(n)
    }
    fn get(&self, table: Table, key: &[u8]) -> Res<Option<Vec<u8>>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(REDB_TABLES[table as usize]).map_err(err)?;
        Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }
    fn flush(&self) -> Res<()> {
        Ok(())
    }
}
