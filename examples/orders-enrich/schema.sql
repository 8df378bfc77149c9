-- The customers table the orders-enrich example looks up (psql -f schema.sql).
create table if not exists customers (
    id bigint primary key,
    name text not null,
    email text not null,
    tier text not null
);
insert into customers values
    (1, 'Ada Lovelace', 'ada@example.com', 'gold'),
    (2, 'Alan Turing', 'alan@example.com', 'silver')
on conflict (id) do nothing;
