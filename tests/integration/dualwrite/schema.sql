-- A TPC-B-like tenant schema for the write-mirroring tests: serial and identity ids, now(),
-- clock_timestamp() and gen_random_uuid() defaults, a stored generated column, an array column,
-- a composite primary key, a unique constraint, FK cascades (ON DELETE CASCADE / SET NULL), a self-referencing table,
-- an application trigger that writes another tenant table, and a global table.

CREATE TABLE plans (
    id    serial PRIMARY KEY,
    name  text NOT NULL
);
CREATE TABLE branches (
    id          serial PRIMARY KEY,
    shop_id     integer NOT NULL,
    name        text NOT NULL,
    balance     bigint NOT NULL DEFAULT 0,
    plan_id     integer REFERENCES plans (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tellers (
    id         serial PRIMARY KEY,
    shop_id    integer NOT NULL,
    branch_id  integer NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    balance    bigint NOT NULL DEFAULT 0
);
CREATE TABLE accounts (
    id             serial PRIMARY KEY,
    shop_id        integer NOT NULL,
    branch_id      integer NOT NULL REFERENCES branches (id) ON DELETE CASCADE,
    balance        bigint NOT NULL DEFAULT 0,
    ref            uuid NOT NULL DEFAULT gen_random_uuid(),
    note           text,
    number         text,
    labels         text[] NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_activity  timestamptz,
    UNIQUE (shop_id, number)
);
CREATE TABLE history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shop_id     integer NOT NULL,
    account_id  integer NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    teller_id   integer REFERENCES tellers (id) ON DELETE SET NULL,
    delta       integer NOT NULL,
    doubled     integer GENERATED ALWAYS AS (delta * 2) STORED,
    uid         uuid NOT NULL DEFAULT gen_random_uuid(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX history_account ON history (account_id);
CREATE TABLE account_tags (
    shop_id     integer NOT NULL,
    account_id  integer NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    tag         text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, tag)
);
CREATE TABLE categories (
    id         serial PRIMARY KEY,
    shop_id    integer NOT NULL,
    parent_id  integer REFERENCES categories (id) ON DELETE CASCADE,
    name       text NOT NULL
);

-- The application's own trigger: a history row touches its account (a second captured write).
CREATE FUNCTION touch_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET last_activity = NEW.at WHERE id = NEW.account_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER history_touch AFTER INSERT ON history FOR EACH ROW EXECUTE FUNCTION touch_account();

INSERT INTO plans (name) VALUES ('basic'), ('pro');
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO app_user;
