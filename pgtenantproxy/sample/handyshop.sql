-- HandyShop: a phone-repair shop platform, every tenant row tagged with shop_id.
CREATE TABLE shops (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    city        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- A global table: shared by every shop.
CREATE TABLE device_models (
    id      serial PRIMARY KEY,
    brand   text NOT NULL,
    model   text NOT NULL UNIQUE
);
CREATE TABLE users (
    id       serial PRIMARY KEY,
    shop_id  integer NOT NULL REFERENCES shops(id),
    email    text NOT NULL UNIQUE,
    role     text NOT NULL CHECK (role IN ('owner', 'staff'))
);
CREATE TABLE customers (
    id       serial PRIMARY KEY,
    shop_id  integer NOT NULL REFERENCES shops(id),
    name     text NOT NULL,
    phone    text
);
CREATE TABLE repairs (
    id               bigserial PRIMARY KEY,
    shop_id          integer NOT NULL REFERENCES shops(id),
    customer_id      integer NOT NULL REFERENCES customers(id),
    device_model_id  integer REFERENCES device_models(id),
    status           text NOT NULL DEFAULT 'received',
    price            numeric(10, 2),
    notes            jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX repairs_shop_status ON repairs (shop_id, status);

-- Size: SET handyshop.shops and handyshop.customers_per_shop before loading to change it
-- (defaults: 10 shops, 50 customers each, 4 repairs per customer).
CREATE TEMPORARY TABLE sample_size AS
SELECT coalesce(nullif(current_setting('handyshop.shops', true), '')::int, 10) AS shops,
       coalesce(nullif(current_setting('handyshop.customers_per_shop', true), '')::int, 50) AS customers;

INSERT INTO shops (id, name, city)
SELECT i, 'Shop ' || i, (ARRAY['Berlin', 'Lyon', 'Porto', 'Gdańsk', 'Malmö'])[1 + i % 5]
FROM sample_size, generate_series(1, sample_size.shops) AS i;

INSERT INTO device_models (brand, model)
SELECT b, b || ' ' || m
FROM unnest(ARRAY['Phonix', 'Galaxo', 'Pixelo']) AS b, generate_series(1, 8) AS m;

INSERT INTO users (shop_id, email, role)
SELECT s, 'owner' || s || '@example.test', 'owner' FROM sample_size, generate_series(1, sample_size.shops) AS s;

INSERT INTO customers (shop_id, name, phone)
SELECT 1 + i % z.shops, 'Customer ' || i, '+49 30 ' || (100000 + i)
FROM sample_size AS z, generate_series(1, z.shops * z.customers) AS i;

INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price, notes)
SELECT c.shop_id, c.id, 1 + (c.id * 7) % 24,
       (ARRAY['received', 'diagnosed', 'repaired', 'returned'])[1 + c.id % 4],
       round((20 + (c.id * 37) % 300)::numeric, 2),
       jsonb_build_object('screen', c.id % 2 = 0)
FROM customers AS c, generate_series(1, 4) AS n;

DROP TABLE sample_size;
