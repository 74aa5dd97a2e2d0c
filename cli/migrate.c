/* tierone migrate: apply (or list) the database migrations; see lib/migrate.h. */
#include "cli.h"

#include "migrate.h"

#include <getopt.h>
#include <stdlib.h>
#include <sys/stat.h>

void cli_migrate_usage(FILE *out)
{
    fprintf(
        out,
        "usage: tierone migrate [--database-url URL] [--dir DIR] [--status]\n"
        "\n"
        "Applies every NNNN_name.sql in DIR not yet recorded in schema_migrations, in\n"
        "order, each in its own transaction, under an advisory lock. Running it again\n"
        "applies nothing.\n"
        "\n"
        "  -d, --database-url URL  PostgreSQL URL or conninfo (default: $TIERONE_DATABASE_URL)\n"
        "      --dir DIR           migrations directory (default: $TIERONE_MIGRATIONS_DIR,\n"
        "                          else %s if it exists,\n"
        "                          else %s)\n"
        "      --status            list applied and pending migrations; change nothing\n"
        "  -h, --help              this help\n",
        TIERONE_MIGRATIONS_INSTALLED, TIERONE_MIGRATIONS_SOURCE);
}

static const char *cli_migrate_default_dir(void)
{
    const char *env = getenv("TIERONE_MIGRATIONS_DIR");
    if (env && *env)
        return env;
    struct stat st;
    if (stat(TIERONE_MIGRATIONS_INSTALLED, &st) == 0 && S_ISDIR(st.st_mode))
        return TIERONE_MIGRATIONS_INSTALLED;
    return TIERONE_MIGRATIONS_SOURCE;
}

static int cli_migrate_status(const char *url, const char *dir)
{
    struct migration_list l;
    char *err = NULL;
    if (migrate_status(url, dir, &l, &err) != 0) {
        fprintf(stderr, "tierone migrate: %s\n", err);
        free(err);
        return 1;
    }
    size_t pending = 0, changed = 0;
    for (size_t i = 0; i < l.n; i++) {
        const struct migration *m = &l.v[i];
        const char *state = !m->applied ? "pending" : m->changed ? "CHANGED" : "applied";
        pending += !m->applied;
        changed += m->changed;
        printf("%-8s %s%s%s%s\n", state, m->name, m->applied_at ? "  " : "",
               m->applied_at ? m->applied_at : "", m->path ? "" : "  (file missing)");
    }
    printf("%zu applied, %zu pending%s\n", l.n - pending, pending,
           changed ? ", some applied files changed since" : "");
    migration_list_free(&l);
    return 0;
}

static int cli_migrate_apply(const char *url, const char *dir)
{
    struct migration_list applied;
    char *err = NULL;
    int rc = migrate_apply(url, dir, &applied, &err);
    for (size_t i = 0; i < applied.n; i++)
        printf("applied %s\n", applied.v[i].name);
    if (rc != 0) {
        fprintf(stderr, "tierone migrate: %s\n", err);
        free(err);
    } else if (applied.n == 0) {
        printf("database is up to date\n");
    } else {
        printf("%zu migration%s applied\n", applied.n, applied.n == 1 ? "" : "s");
    }
    migration_list_free(&applied);
    return rc == 0 ? 0 : 1;
}

int cli_migrate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"database-url", required_argument, NULL, 'd'},
        {"dir", required_argument, NULL, 'D'},
        {"status", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = getenv("TIERONE_DATABASE_URL");
    const char *dir = NULL;
    int status = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            url = optarg;
            break;
        case 'D':
            dir = optarg;
            break;
        case 's':
            status = 1;
            break;
        case 'h':
            cli_migrate_usage(stdout);
            return 0;
        default:
            cli_migrate_usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tierone migrate: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (!url || !*url) {
        fprintf(stderr, "tierone migrate: no database: pass --database-url or set "
                        "TIERONE_DATABASE_URL\n");
        return 1;
    }
    if (!dir)
        dir = cli_migrate_default_dir();
    return status ? cli_migrate_status(url, dir) : cli_migrate_apply(url, dir);
}
