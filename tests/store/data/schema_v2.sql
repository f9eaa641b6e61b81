-- A mailhouse database at schema version 2, as that release wrote it.
-- Generated once and never edited: later releases must open it (security.md checklist 37).
-- Blob files are not included; the test loads this with PRAGMA user_version = 2.
BEGIN TRANSACTION;
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    address       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL
);
INSERT INTO "accounts" VALUES(1,'alice@example.org','$argon2id$fixture');
CREATE TABLE aliases (
    alias   TEXT PRIMARY KEY,
    targets TEXT NOT NULL  -- JSON array of address keys, in order
) WITHOUT ROWID;
INSERT INTO "aliases" VALUES('postmaster@example.org','["alice@example.org"]');
CREATE TABLE blobs (
    id       TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO "blobs" VALUES('20261128/6c559aa0c3ff4ccab28ec7be37003e73',21,2);
INSERT INTO "blobs" VALUES('20261128/dfba15d0c9c74d0ba8dd50514536b99e',8,1);
CREATE TABLE domains (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT INTO "domains" VALUES('example.org');
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE TABLE mailboxes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    special_use    TEXT,
    uidvalidity    INTEGER NOT NULL CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext        INTEGER NOT NULL DEFAULT 1,
    highest_modseq INTEGER NOT NULL DEFAULT 0,
    subscribed     INTEGER NOT NULL DEFAULT 1,
    message_count  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);
INSERT INTO "mailboxes" VALUES(1,1,'INBOX',NULL,1795858200,1,0,1,0);
INSERT INTO "mailboxes" VALUES(2,1,'Sent','\Sent',1795858201,2,1,1,1);
INSERT INTO "mailboxes" VALUES(3,1,'Drafts','\Drafts',1795858202,1,0,1,0);
INSERT INTO "mailboxes" VALUES(4,1,'Trash','\Trash',1795858203,1,0,1,0);
INSERT INTO "mailboxes" VALUES(5,1,'Junk','\Junk',1795858204,1,0,1,0);
INSERT INTO "mailboxes" VALUES(6,1,'Archive','\Archive',1795858205,1,0,1,0);
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox_id    INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid           INTEGER NOT NULL,
    modseq        INTEGER NOT NULL,
    flags         TEXT NOT NULL DEFAULT '',  -- space-separated, sorted
    internal_date REAL NOT NULL,
    size          INTEGER NOT NULL,
    blob_id       TEXT NOT NULL,
    UNIQUE (mailbox_id, uid)
);
INSERT INTO "messages" VALUES(1,2,1,1,'',1.79585820005002212524e+09,21,'20261128/6c559aa0c3ff4ccab28ec7be37003e73');
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO "meta" VALUES('directory_serial',3);
INSERT INTO "meta" VALUES('last_uidvalidity',1795858205);
CREATE TABLE queue (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id      TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sender       TEXT NOT NULL,  -- '' for the null reverse-path
    created      REAL NOT NULL,
    smtputf8     INTEGER NOT NULL DEFAULT 0,
    body_8bit    INTEGER NOT NULL DEFAULT 0,
    delay_warned INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "queue" VALUES(1,'20261128/6c559aa0c3ff4ccab28ec7be37003e73',21,'alice@example.org',1.79585820005002212524e+09,0,1,0);
INSERT INTO "queue" VALUES(2,'20261128/dfba15d0c9c74d0ba8dd50514536b99e',8,'',1.79585820005295944217e+09,0,0,0);
CREATE TABLE queue_recipients (
    id           INTEGER PRIMARY KEY,  -- insertion order = the order the sender gave
    queue_id     INTEGER NOT NULL REFERENCES queue (id) ON DELETE CASCADE,
    address      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply   TEXT,
    UNIQUE (queue_id, address)
);
INSERT INTO "queue_recipients" VALUES(1,1,'bob@remote.example','pending',1,1800000600.0,'451 4.7.1 greylisted');
INSERT INTO "queue_recipients" VALUES(2,1,'carol@other.example','failed',1,1800000000.0,'550 5.1.1 no such user');
INSERT INTO "queue_recipients" VALUES(3,2,'alice@remote.example','pending',0,1800000000.0,NULL);
CREATE INDEX blobs_garbage ON blobs (refcount) WHERE refcount <= 0;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt, queue_id)
    WHERE status = 'pending';
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('accounts',1);
INSERT INTO "sqlite_sequence" VALUES('mailboxes',6);
INSERT INTO "sqlite_sequence" VALUES('messages',1);
INSERT INTO "sqlite_sequence" VALUES('queue',2);
COMMIT;
