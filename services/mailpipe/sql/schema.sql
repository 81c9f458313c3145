-- The application's side of the contract with Mailpipe (MySQL 8 or MariaDB 10.6+).
-- Mailpipe only reads these tables. Applications write users, templates and campaigns, and insert
-- one email_outbox row per transactional email. Times are UTC.

CREATE TABLE IF NOT EXISTS users (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email           VARCHAR(320) NOT NULL,               -- as the user typed it; Unicode allowed
    first_name      VARCHAR(100) NULL,
    last_name       VARCHAR(100) NULL,
    locale          VARCHAR(16) NOT NULL DEFAULT 'en_US',
    unsubscribed_at DATETIME(6) NULL,                    -- set: no campaign mail
    bounced_at      DATETIME(6) NULL,                    -- set: no campaign mail
    created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY users_locale_id (locale, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Jinja2 templates, rendered in a sandbox; the HTML body is autoescaped. Variables: first_name,
-- last_name, email, locale, plus the outbox row's params. A null value counts as undefined, so
-- templates write {{ first_name | default('there') }}.
CREATE TABLE IF NOT EXISTS templates (
    id         INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(100) NOT NULL UNIQUE,
    subject    TEXT NOT NULL,
    body_text  MEDIUMTEXT NOT NULL,
    body_html  MEDIUMTEXT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A campaign goes to its audience once it is due: 'all' users, or 'locale:fr_FR' for one locale.
CREATE TABLE IF NOT EXISTS campaigns (
    id           INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name         VARCHAR(200) NOT NULL,
    template_id  INT UNSIGNED NOT NULL,
    email_group  VARCHAR(40) NOT NULL DEFAULT 'announcements',
    audience     VARCHAR(100) NOT NULL DEFAULT 'all',
    due_at       DATETIME(6) NOT NULL,
    cancelled_at DATETIME(6) NULL,
    KEY campaigns_due_at (due_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Transactional requests. Rows are read in id order and never changed by Mailpipe; params is a
-- JSON object of template variables.
CREATE TABLE IF NOT EXISTS email_outbox (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email_group VARCHAR(40) NOT NULL DEFAULT 'transactional',
    user_id     BIGINT UNSIGNED NOT NULL,
    template_id INT UNSIGNED NOT NULL,
    params      JSON NULL,
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
