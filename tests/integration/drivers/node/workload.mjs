// The driver tier's workload in node-postgres + Drizzle ORM (see tests/integration/drivers/workload.py).
//
// Usage: node workload.mjs SHOP TAG MAX_CUSTOMER   (connection from PGHOST, PGPORT, PGDATABASE, PGUSER,
// PGPASSWORD; MAX_CUSTOMER: the sample's largest customer id, the customers all_shops counts)
// Prints {"driver": "node-drizzle", "shop": SHOP, "steps": [...]} on stdout.
//
// Drizzle's query builder over a pg.Pool (as apps use it): insert/update/delete/select builders,
// db.transaction() (a nested tx.transaction() is a savepoint), a multi-row insert for the batch,
// a named prepared statement (.prepare(name): server-side, parsed once per connection), and COPY
// through pg-copy-streams on a client of the same pool (text format).
import pg from 'pg';
import { drizzle } from 'drizzle-orm/node-postgres';
import { pgTable, serial, bigserial, integer, text, numeric, jsonb, timestamp } from 'drizzle-orm/pg-core';
import { and, desc, eq, like, lte, sql, count, TransactionRollbackError } from 'drizzle-orm';
import copyStreams from 'pg-copy-streams';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';

const { from: copyFrom, to: copyTo } = copyStreams;

export const shops = pgTable('shops', {
  id: integer('id').primaryKey(),
  name: text('name').notNull(),
  city: text('city').notNull(),
});
export const customers = pgTable('customers', {
  id: serial('id').primaryKey(),
  shopId: integer('shop_id').notNull(),
  name: text('name').notNull(),
  phone: text('phone'),
});
export const deviceModels = pgTable('device_models', {
  id: serial('id').primaryKey(),
  brand: text('brand').notNull(),
  model: text('model').notNull(),
});
export const users = pgTable('users', {
  id: serial('id').primaryKey(),
  shopId: integer('shop_id').notNull(),
  email: text('email').notNull(),
  role: text('role').notNull(),
});
export const repairs = pgTable('repairs', {
  id: bigserial('id', { mode: 'number' }).primaryKey(),
  shopId: integer('shop_id').notNull(),
  customerId: integer('customer_id').notNull(),
  deviceModelId: integer('device_model_id'),
  status: text('status').notNull().default('received'),
  price: numeric('price', { precision: 10, scale: 2 }),
  notes: jsonb('notes').notNull().default({}),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

const MISSING_CUSTOMER = 2147483647;
const shop = Number(process.argv[2]);
const tag = process.argv[3];
const maxCustomer = Number(process.argv[4]);
const steps = [];

function pgError(err) {
  // Drizzle wraps the driver's error (DrizzleQueryError) with the original as `cause`.
  for (let e = err; e; e = e.cause) {
    if (e.code && /^[0-9A-Z]{5}$/.test(e.code)) return { sqlstate: e.code, message: e.message };
  }
  return { sqlstate: null, message: String(err && err.message || err) };
}

async function step(label, kind, fn) {
  try {
    const value = await fn();
    if (kind === 'rows') steps.push({ label, rows: value });
    else if (kind === 'count') steps.push({ label, count: value });
    else steps.push({ label, ok: true });
    return value;
  } catch (err) {
    if (err instanceof TransactionRollbackError) throw err;
    steps.push({ label, error: pgError(err) });
    return null;
  }
}

const rowsOf = (list, ...keys) => list.map((r) => keys.map((k) => (r[k] === undefined ? null : r[k])));
const repairRows = (list) => rowsOf(list, 'id', 'customerId', 'deviceModelId', 'status', 'price');
const selectRepair = (db, rid) => db.select({
  id: repairs.id, customerId: repairs.customerId, deviceModelId: repairs.deviceModelId,
  status: repairs.status, price: repairs.price,
}).from(repairs).where(eq(repairs.id, rid));

class Rollback extends Error {}

async function main() {
  const pool = new pg.Pool({ max: 4 });
  const db = drizzle(pool);
  try {
    const c = await step('insert_customer', 'rows', async () => rowsOf(await db.insert(customers)
      .values({ shopId: shop, name: `${tag} customer`, phone: '+49 30 555 0100' })
      .returning({ id: customers.id }), 'id'));
    const cid = c ? c[0][0] : null;
    const r = await step('insert_repair', 'rows', async () => rowsOf(await db.insert(repairs)
      .values({ shopId: shop, customerId: cid, deviceModelId: 3, status: 'received', price: '120.00' })
      .returning({ id: repairs.id }), 'id'));
    const rid = r ? r[0][0] : null;
    await step('select_repair', 'rows', async () => repairRows(await selectRepair(db, rid)));
    await step('update_status', 'count', async () =>
      (await db.update(repairs).set({ status: 'diagnosed' }).where(eq(repairs.id, rid))).rowCount);

    // A transaction that begins with an update by id.
    try {
      await db.transaction(async (tx) => {
        await step('tx1.update_price', 'count', async () =>
          (await tx.update(repairs).set({ price: sql`${repairs.price} + 1` }).where(eq(repairs.id, rid))).rowCount);
        await step('tx1.insert_repair', 'count', async () =>
          (await tx.insert(repairs).values({ shopId: shop, customerId: cid, status: 'received' })).rowCount);
      });
      steps.push({ label: 'tx1.commit', ok: true });
    } catch (err) {
      steps.push({ label: 'tx1.commit', error: pgError(err) });
    }
    await step('tx1.check', 'rows', async () => rowsOf(await db.select({ n: count() }).from(repairs)
      .where(and(eq(repairs.shopId, shop), eq(repairs.customerId, cid))), 'n'));

    // A savepoint (nested transaction) with an error inside, rolled back to, then a good update.
    try {
      await db.transaction(async (tx) => {
        await step('tx2.update_status', 'count', async () =>
          (await tx.update(repairs).set({ status: 'diagnosed' }).where(eq(repairs.id, rid))).rowCount);
        try {
          await tx.transaction(async (sp) => {
            steps.push({ label: 'tx2.savepoint', ok: true });
            await step('tx2.duplicate_user', 'count', async () =>
              (await sp.insert(users).values({ shopId: shop, email: `owner${shop}@example.test`, role: 'staff' }))
                .rowCount);
            throw new Rollback();
          });
        } catch (err) {
          if (err instanceof Rollback) steps.push({ label: 'tx2.rollback_to_savepoint', ok: true });
          else steps.push({ label: 'tx2.rollback_to_savepoint', error: pgError(err) });
        }
        await step('tx2.update_price', 'count', async () =>
          (await tx.update(repairs).set({ price: '99.50' }).where(eq(repairs.id, rid))).rowCount);
      });
      steps.push({ label: 'tx2.commit', ok: true });
    } catch (err) {
      steps.push({ label: 'tx2.commit', error: pgError(err) });
    }
    await step('tx2.check', 'rows', async () => rowsOf(await db.select({ status: repairs.status, price: repairs.price })
      .from(repairs).where(eq(repairs.id, rid)), 'status', 'price'));

    // An error without a savepoint: the next statement gets 25P02; tx.rollback() ends it.
    try {
      await db.transaction(async (tx) => {
        await step('tx3.insert_customer', 'count', async () =>
          (await tx.insert(customers).values({ shopId: shop, name: `${tag} rolled back`, phone: null })).rowCount);
        await step('tx3.bad_repair', 'count', async () =>
          (await tx.insert(repairs).values({ shopId: shop, customerId: MISSING_CUSTOMER, status: 'received' })).rowCount);
        await step('tx3.after_error', 'rows', async () =>
          rowsOf(await tx.select({ n: count() }).from(customers).where(eq(customers.shopId, shop)), 'n'));
        tx.rollback();
      });
      steps.push({ label: 'tx3.rollback', error: { sqlstate: null, message: 'the transaction committed' } });
    } catch (err) {
      if (err instanceof TransactionRollbackError) steps.push({ label: 'tx3.rollback', ok: true });
      else steps.push({ label: 'tx3.rollback', error: pgError(err) });
    }
    await step('tx3.check', 'rows', async () => rowsOf(await db.select({ n: count() }).from(customers)
      .where(and(eq(customers.shopId, shop), eq(customers.name, `${tag} rolled back`))), 'n'));

    // Drizzle's batch insert: one multi-row INSERT.
    await step('executemany', 'ok', async () => db.insert(customers).values([1, 2, 3, 4, 5].map((n) => (
      { shopId: shop, name: `${tag} batch ${n}`, phone: `+49 30 555 02${n - 1}` }))));
    await step('executemany.check', 'rows', async () => rowsOf(await db.select({ n: count() }).from(customers)
      .where(and(eq(customers.shopId, shop), like(customers.name, `${tag} batch %`))), 'n'));

    const findCustomer = db.select({ id: customers.id, name: customers.name, phone: customers.phone })
      .from(customers)
      .where(and(eq(customers.shopId, sql.placeholder('shop')), eq(customers.name, sql.placeholder('name'))))
      .prepare('find_customer');
    for (const n of [1, 2, 3]) {
      await step(`prepared.${n}`, 'rows', async () =>
        rowsOf(await findCustomer.execute({ shop, name: `${tag} batch ${n}` }), 'id', 'name', 'phone'));
    }

    await step('fk_join', 'rows', async () => rowsOf(await db.select({ id: repairs.id, name: customers.name })
      .from(repairs).innerJoin(customers, eq(customers.id, repairs.customerId))
      .where(eq(repairs.shopId, shop)).orderBy(repairs.id).limit(20), 'id', 'name'));
    await step('global_join', 'rows', async () => rowsOf(await db.select({
      id: repairs.id, brand: deviceModels.brand, model: deviceModels.model,
    }).from(repairs).innerJoin(deviceModels, eq(deviceModels.id, repairs.deviceModelId))
      .where(eq(repairs.shopId, shop)).orderBy(desc(repairs.id)).limit(3), 'id', 'brand', 'model'));
    // Every shop: the sample's customers per shop (a read no shop id narrows).
    await step('all_shops', 'rows', async () => rowsOf(await db.select({
      id: shops.id, name: shops.name, n: count(customers.id),
    }).from(shops).innerJoin(customers, eq(customers.shopId, shops.id))
      .where(lte(customers.id, maxCustomer)).groupBy(shops.id, shops.name).orderBy(shops.id), 'id', 'name', 'n'));

    await step('copy_in', 'count', async () => {
      const client = await pool.connect();
      try {
        const stream = client.query(copyFrom('COPY customers (shop_id, name, phone) FROM STDIN'));
        const lines = [];
        for (let n = 1; n <= 20; n++) lines.push(`${shop}\t${tag} copy ${String(n).padStart(2, '0')}\t\\N\n`);
        await pipeline(Readable.from(lines), stream);
        return stream.rowCount;
      } finally {
        client.release();
      }
    });
    await step('copy_out', 'rows', async () => {
      const client = await pool.connect();
      try {
        const chunks = [];
        const stream = client.query(copyTo(
          `COPY (SELECT id, name FROM customers WHERE shop_id = ${shop} ORDER BY id) TO STDOUT`));
        await pipeline(stream, new Writable({ write(chunk, _enc, done) { chunks.push(chunk); done(); } }));
        return Buffer.concat(chunks).toString('utf8').split('\n').filter((l) => l.length > 0)
          .map((l) => { const [id, name] = l.split('\t'); return [Number(id), name]; });
      } finally {
        client.release();
      }
    });
    await step('delete_repair', 'count', async () => (await db.delete(repairs).where(eq(repairs.id, rid))).rowCount);
    await step('select_deleted', 'rows', async () => repairRows(await selectRepair(db, rid)));
  } finally {
    await pool.end();
  }
  process.stdout.write(JSON.stringify({ driver: 'node-drizzle', shop, steps }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`workload crashed: ${err && err.stack || err}\n`);
  process.exit(1);
});
