-- The driver tier's workload as a psql script (see tests/integration/drivers/workload.py).
-- The dollar-brace placeholders (shop, tag, copy_file, missing_customer, max_customer) are filled in by the harness (string.Template) before the run
-- (\copy takes its whole line literally); ids travel in psql variables (\gset). The \copy data is
-- a file: inline data after a refused COPY would be read as SQL.
-- After every statement: "@@end SQLSTATE ROW_COUNT" and the last error message; the harness
-- turns the output into the workload's JSON.
\set ON_ERROR_STOP 0
\pset format unaligned
\pset tuples_only on
\pset fieldsep '\t'
\pset null '<NULL>'
\set cid NULL
\set rid NULL

\echo @@step insert_customer
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} customer', '+49 30 555 0100') RETURNING id AS cid \gset
\echo :cid
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step insert_repair
INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price)
VALUES (${shop}, :cid, 3, 'received', 120.00) RETURNING id AS rid \gset
\echo :rid
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step select_repair
SELECT id, customer_id, device_model_id, status, price FROM repairs WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step update_status
UPDATE repairs SET status = 'diagnosed' WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

-- A transaction that begins with an update by id.
\echo @@step tx1.begin
BEGIN;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx1.update_price
UPDATE repairs SET price = price + 1 WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx1.insert_repair
INSERT INTO repairs (shop_id, customer_id, status) VALUES (${shop}, :cid, 'received');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx1.commit
COMMIT;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx1.check
SELECT count(*) FROM repairs WHERE shop_id = ${shop} AND customer_id = :cid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

-- SAVEPOINT, an error inside it, ROLLBACK TO SAVEPOINT, a good update, COMMIT.
\echo @@step tx2.begin
BEGIN;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.update_status
UPDATE repairs SET status = 'diagnosed' WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.savepoint
SAVEPOINT before_user;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.duplicate_user
INSERT INTO users (shop_id, email, role) VALUES (${shop}, 'owner${shop}@example.test', 'staff');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.rollback_to_savepoint
ROLLBACK TO SAVEPOINT before_user;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.update_price
UPDATE repairs SET price = 99.50 WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.commit
COMMIT;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx2.check
SELECT status, price FROM repairs WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

-- An error without a savepoint: 25P02 on the next statement, then ROLLBACK.
\echo @@step tx3.begin
BEGIN;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx3.insert_customer
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} rolled back', NULL);
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx3.bad_repair
INSERT INTO repairs (shop_id, customer_id, status) VALUES (${shop}, ${missing_customer}, 'received');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx3.after_error
SELECT count(*) FROM customers WHERE shop_id = ${shop};
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx3.rollback
ROLLBACK;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step tx3.check
SELECT count(*) FROM customers WHERE shop_id = ${shop} AND name = '${tag} rolled back';
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

-- psql has no executemany: five INSERTs in one simple Query (\; keeps them in one message).
\echo @@step executemany
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} batch 1', '+49 30 555 020') \;
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} batch 2', '+49 30 555 021') \;
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} batch 3', '+49 30 555 022') \;
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} batch 4', '+49 30 555 023') \;
INSERT INTO customers (shop_id, name, phone) VALUES (${shop}, '${tag} batch 5', '+49 30 555 024');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step executemany.check
SELECT count(*) FROM customers WHERE shop_id = ${shop} AND name LIKE '${tag} batch %';
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

-- SQL-level PREPARE / EXECUTE: psql's prepared statements.
\echo @@step prepared.prepare
PREPARE find_customer(int, text) AS SELECT id, name, phone FROM customers WHERE shop_id = $1 AND name = $2;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step prepared.1
EXECUTE find_customer(${shop}, '${tag} batch 1');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step prepared.2
EXECUTE find_customer(${shop}, '${tag} batch 2');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step prepared.3
EXECUTE find_customer(${shop}, '${tag} batch 3');
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step fk_join
SELECT r.id, c.name FROM repairs r JOIN customers c ON c.id = r.customer_id
WHERE r.shop_id = ${shop} ORDER BY r.id LIMIT 20;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step global_join
SELECT r.id, d.brand, d.model FROM repairs r JOIN device_models d ON d.id = r.device_model_id
WHERE r.shop_id = ${shop} ORDER BY r.id DESC LIMIT 3;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
-- Every shop: the sample's customers per shop (max_customer: the sample's largest customer id).
\echo @@step all_shops
SELECT s.id, s.name, count(c.id) FROM shops s JOIN customers c ON c.shop_id = s.id
WHERE c.id <= ${max_customer} GROUP BY s.id, s.name ORDER BY s.id;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step copy_in
\copy customers (shop_id, name, phone) FROM '${copy_file}'
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step copy_out
\copy (SELECT id, name FROM customers WHERE shop_id = ${shop} ORDER BY id) TO stdout
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE

\echo @@step delete_repair
DELETE FROM repairs WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
\echo @@step select_deleted
SELECT id, customer_id, device_model_id, status, price FROM repairs WHERE id = :rid;
\echo @@end :SQLSTATE :ROW_COUNT
\echo @@msg :LAST_ERROR_MESSAGE
