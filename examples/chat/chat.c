/*
 * chat: a terminal chat over the qrpc broker (docs/broker.md). A room is
 * the broker topic "chat.<room>": every line typed is published there, and
 * every message published there is printed as "[room] nick: text", the
 * user's own included (seeing it come back shows that the broker has it).
 *
 *   chat --name NICK [--room ROOM] [--connect HOST:PORT] [--ca PEM]
 *        [--servername NAME] [--cert PEM --key PEM] [--token TOKEN]
 *        [--verbose]
 *   chat --demo N [--room ROOM] [--connect ...] [--ca ...] ...
 *
 * The defaults match `make certs` and qrpc-broker's: 127.0.0.1:7422,
 * build/certs/ca.pem, server name localhost, room "lobby". --cert and
 * --key (both or neither) give the client certificate presented to a
 * broker that requires one (qrpc-broker --client-ca), whose ACL may grant
 * rights by certificate; a broker that refuses it, or the lack of one, is
 * named as the reason when the connection cannot be made.
 *
 * A message's payload is the sender's nick, one NUL byte and the text:
 * "alice\0hello". No schema to agree on, and a nick never contains a NUL.
 * Received text is printed with ASCII control characters replaced by '?',
 * so a message cannot drive the terminal.
 *
 * Input is read from stdin without blocking the loop, line by line; a line
 * of more than TEXT_MAX bytes is refused whole. Commands: "/join ROOM"
 * leaves the room for another one, "/quit" (like the end of input or
 * SIGINT) leaves once the broker has answered the messages sent (not
 * necessarily after their echo arrived); a line starting with "//" is sent
 * with one '/' less.
 *
 * --demo N runs N users in this process, each with its own broker client
 * on the one loop, in ROOM; with --connect A,B,... user i connects to
 * entry i modulo their count (the nodes of a broker cluster), where
 * otherwise a list is one user's failover order. Once all are subscribed each
 * publishes 3 messages; every user must then receive every message, its own
 * included, exactly once and in each sender's order, within DEMO_TIMEOUT_MS.
 *
 * Exit status: 0 after /quit, SIGINT or the end of input, or when the
 * demo passed; 1 when the broker refused the token, the demo failed (what
 * is missing on stderr) or the loop failed; 2 on a bad command line.
 */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <qrpc/broker.h>
#include <qrpc/qrpc.h>

#define PROG "chat"
#define NICK_MAX 32
#define ROOM_MAX 64
#define TEXT_MAX 1000
/* Bytes read from stdin at a time: at most 256 lines, so that with the
 * pause below the publishes in flight stay under the client's max_pending
 * (1024) even while it is not connected. */
#define READ_CHUNK 512
/* Input stops while this many publishes are unanswered... */
#define IN_FLIGHT_PAUSE 512
/* ...and resumes below this many. */
#define IN_FLIGHT_RESUME 256
/* How long /quit waits for the broker to answer what was sent. */
#define QUIT_WAIT_MS 5000
/* When to say that the first connection is still not made. */
#define CONNECT_NOTICE_MS 5000

#define DEMO_MAX_USERS 100
#define DEMO_MESSAGES 3
#define DEMO_TIMEOUT_MS 10000
/* After the last expected message, how long the demo waits for a
 * duplicate before it declares success. */
#define DEMO_GRACE_MS 300
/* With --connect A,B,... (a cluster), how long the demo lets the users'
 * subscriptions spread through NATS before anyone sends. */
#define DEMO_SETTLE_US 500000
/* Problems the demo prints one by one before it only counts them. */
#define DEMO_REPORT_MAX 20

typedef struct options {
  const char *connect;
  const char *ca;
  const char *servername;
  const char *cert;
  const char *key;
  const char *name;
  const char *room;
  const char *token;
  unsigned long demo; /* 0: interactive */
  int verbose;
} options;

typedef struct chat chat;

/* One chat user: a broker client subscribed to one room. */
typedef struct user {
  chat *c;
  int idx;
  char nick[NICK_MAX + 1];
  char room[ROOM_MAX + 1];
  qrpc_broker_client *bc;
  qrpc_broker_sub *sub;
  int connected;     /* on_ready with status 0, ever */
  int sub_confirmed; /* the current room's subscription, ever */
  size_t in_flight;  /* publishes not yet answered */

  /* The demo's checks. */
  uint32_t *from; /* per sender: its messages received so far, in order */
  uint64_t in_order, duplicates, disorder, malformed;
  uint32_t acked, ack_failed, ack_short;
} user;

/* Standard input, line by line. */
typedef struct input {
  struct event *ev;
  int manual; /* fd 0 cannot be watched (a regular file, /dev/null): ev
                 is a timer of 0 s, added again after each read */
  int active; /* ev is added */
  size_t len;
  int too_long; /* the current line is over TEXT_MAX: skipped to its end */
  char line[TEXT_MAX + 1];
} input;

struct chat {
  options opt;
  qrpc_loop *loop;
  qrpc_tls_config *tls;
  user *users;
  int n;
  int status;
  int quitting;
  int closing; /* the clients are being freed: callbacks do nothing */
  input in;
  struct event *deadline, *notice, *sigterm, *sigint;
  uint64_t start_ns;

  /* The demo. */
  int subscribed;    /* users whose subscription was confirmed */
  int complete;      /* everything expected arrived; in the grace period */
  uint64_t in_order; /* over all users */
  int reported;
  char last_failure[256]; /* why the last connection attempt failed */
};

static chat C;

/* ---- Command line ------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " --name NICK [--room ROOM] [options]\n"
          "       " PROG " --demo N [--room ROOM] [options]\n"
          "\n"
          "  --name NICK          who you are: 1..%d letters, digits, '-',\n"
          "                       '_' or '.'\n"
          "  --room ROOM          the room to join: 1..%d letters, digits,\n"
          "                       '-' or '_' (default lobby)\n"
          "  --connect HOST:PORT  the broker (default 127.0.0.1:7422); a\n"
          "                       list H:P,H:P,... names a cluster's nodes:\n"
          "                       tried in turn (failover), and in the demo\n"
          "                       the users spread over them\n"
          "  --ca PEM             CA to trust (default build/certs/ca.pem)\n"
          "  --servername NAME    name to verify (default localhost)\n"
          "  --cert PEM           client certificate, for brokers that\n"
          "                       require one (with --key)\n"
          "  --key PEM            its private key (with --cert)\n"
          "  --token TOKEN        access token for the broker's ACL\n"
          "  --demo N             no terminal: N users, 1..%d, each send %d\n"
          "                       messages and check they all got all of\n"
          "                       them, in order, within %d s\n"
          "  --verbose            log qrpc debug messages to stderr\n"
          "\n"
          "Type a line to send it. /join ROOM changes rooms, /quit leaves\n"
          "(so does the end of input); //text sends /text.\n",
          NICK_MAX, ROOM_MAX, DEMO_MAX_USERS, DEMO_MESSAGES,
          DEMO_TIMEOUT_MS / 1000);
}

/* Whether s is 1..max bytes of letters, digits and the characters of
 * extra. */
static int word_ok(const char *s, size_t max, const char *extra) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    int alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                (ch >= '0' && ch <= '9');
    if (!alnum && strchr(extra, ch) == NULL) return 0;
  }
  return 1;
}

static int room_ok(const char *s) { return word_ok(s, ROOM_MAX, "-_"); }

static int parse_demo(const char *v, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < 1 ||
      n > DEMO_MAX_USERS) {
    fprintf(stderr,
            PROG ": --demo expects a whole number from 1 to %d, not "
                 "'%s'\n",
            DEMO_MAX_USERS, v);
    return -1;
  }
  *out = n;
  return 0;
}

/* Checks the flags that depend on each other. */
static int check_args(const options *o) {
  if (o->demo && o->name) {
    fprintf(stderr, PROG ": --demo names its users user1..userN; leave out "
                         "--name\n");
    return -1;
  }
  if (!o->demo && !o->name) {
    fprintf(stderr, PROG ": --name NICK is required (see --help)\n");
    return -1;
  }
  if (o->name && !word_ok(o->name, NICK_MAX, "-_.")) {
    fprintf(stderr,
            PROG ": --name expects 1 to %d letters, digits, '-', '_' or "
                 "'.', not '%s'\n",
            NICK_MAX, o->name);
    return -1;
  }
  if ((o->cert == NULL) != (o->key == NULL)) {
    fprintf(stderr,
            PROG ": %s needs %s as well (the client certificate and its key "
                 "go together)\n",
            o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
    return -1;
  }
  if (!room_ok(o->room)) {
    fprintf(stderr,
            PROG ": --room expects 1 to %d letters, digits, '-' or '_', not "
                 "'%s'\n",
            ROOM_MAX, o->room);
    return -1;
  }
  return 0;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->connect = "127.0.0.1:7422";
  o->ca = "build/certs/ca.pem";
  o->servername = "localhost";
  o->room = "lobby";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    }
    if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      o->verbose = 1;
      continue;
    }
    static const char *const flags[] = {"--connect", "--ca",   "--servername",
                                        "--cert",    "--key",  "--name",
                                        "--room",    "--token"};
    const char **strs[] = {&o->connect, &o->ca,   &o->servername, &o->cert,
                           &o->key,     &o->name, &o->room,       &o->token};
    size_t k = 0, nflags = sizeof(flags) / sizeof(flags[0]);
    while (k < nflags && strcmp(a, flags[k]) != 0) k++;
    if (k == nflags && strcmp(a, "--demo") != 0) {
      fprintf(stderr, PROG ": unknown argument '%s' (see --help)\n", a);
      return -1;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (k < nflags)
      *strs[k] = v;
    else if (parse_demo(v, &o->demo) != 0)
      return -1;
  }
  return check_args(o);
}

/* ---- Output ------------------------------------------------------------ */

static uint64_t now_ns(chat *c) { return qrpc_loop_now_ns(c->loop); }

/* Prints len bytes with control characters as '?'. */
static void put_clean(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    putchar(ch < 0x20 || ch == 0x7f ? '?' : ch);
  }
}

/* Why a connection closed, in words. */
static const char *close_reason(const qrpc_close_info *info) {
  if (info->reason && info->reason[0]) return info->reason;
  if (info->error) return qrpc_strerror(info->error);
  switch (info->kind) {
  case QRPC_CLOSE_IDLE: return "idle timeout";
  case QRPC_CLOSE_HANDSHAKE_TIMEOUT: return "handshake timeout";
  case QRPC_CLOSE_TLS: return "TLS handshake failed";
  default: return info->local ? "closed here" : "closed by the broker";
  }
}

static void fail(chat *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Says why (the first time) and ends the run with status 1. */
static void fail(chat *c, const char *fmt, ...) {
  if (c->status != 0) return;
  c->status = 1;
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  qrpc_loop_stop(c->loop);
}

/* The client retries failed attempts on its own: keep the last reason to
 * explain a silence once. */
static void on_conn_state(qrpc_client *cli, const qrpc_client_state_info *info,
                          void *user_data) {
  chat *c = ((user *)user_data)->c;
  (void)cli;
  if (info->state != QRPC_CLIENT_FAILED) return;
  snprintf(c->last_failure, sizeof(c->last_failure), "%s",
           info->close && info->close->reason[0] ? info->close->reason
                                                 : qrpc_strerror(info->error));
}

static void on_log(qrpc_log_level level, const char *msg, void *user_data) {
  chat *c = user_data;
  if (c->opt.verbose || level >= QRPC_LOG_ERROR)
    fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

/* ---- Leaving ----------------------------------------------------------- */

static int input_resume(chat *c);
static void input_stop(chat *c);

static size_t in_flight(const chat *c) {
  size_t n = 0;
  for (int i = 0; i < c->n; i++) n += c->users[i].in_flight;
  return n;
}

/* Stops reading and ends the loop once every publish is answered, or after
 * QUIT_WAIT_MS. */
static void quit(chat *c) {
  if (c->quitting) return;
  c->quitting = 1;
  input_stop(c);
  size_t n = in_flight(c);
  if (n == 0) {
    qrpc_loop_stop(c->loop);
    return;
  }
  printf(PROG ": waiting for the broker to take %zu message%s\n", n,
         n == 1 ? "" : "s");
  struct timeval tv = {QUIT_WAIT_MS / 1000, 0};
  event_add(c->deadline, &tv);
}

/* ---- Messages ---------------------------------------------------------- */

static void demo_on_published(user *u, int status, uint32_t subscribers,
                              const char *detail);

static void on_published(qrpc_broker_client *bc, int status,
                         uint32_t subscribers, const char *detail, void *ud) {
  user *u = ud;
  chat *c = u->c;
  (void)bc;
  u->in_flight--;
  if (c->closing) return;
  if (c->opt.demo) {
    demo_on_published(u, status, subscribers, detail);
    return;
  }
  if (status != QRPC_STATUS_OK)
    printf(PROG ": a message was %s: %s%s%s\n",
           status == QRPC_STATUS_UNAVAILABLE ? "maybe not delivered"
                                             : "not delivered",
           qrpc_status_name(status), detail ? ": " : "", detail ? detail : "");
  size_t n = in_flight(c);
  if (c->quitting && n == 0) qrpc_loop_stop(c->loop);
  if (!c->quitting && !c->in.active && n < IN_FLIGHT_RESUME) input_resume(c);
}

/* Publishes text as u in u's room. Returns 0 or a QRPC_E* error. */
static int send_text(user *u, const char *text, size_t len) {
  char topic[sizeof("chat.") + ROOM_MAX];
  char payload[NICK_MAX + 1 + TEXT_MAX];
  size_t nick_len = strlen(u->nick);
  if (len > TEXT_MAX) return QRPC_EMSGSIZE;
  snprintf(topic, sizeof(topic), "chat.%s", u->room);
  memcpy(payload, u->nick, nick_len + 1); /* the NUL separates */
  memcpy(payload + nick_len + 1, text, len);
  int rc = qrpc_broker_publish(u->bc, topic, payload, nick_len + 1 + len, 0,
                               on_published, u);
  if (rc == 0) u->in_flight++;
  return rc;
}

/* A received message split into nick and text; 0 if it is not one. */
typedef struct chat_msg {
  const char *nick, *text;
  size_t nick_len, text_len;
} chat_msg;

static int decode(const qrpc_broker_msg *m, chat_msg *out) {
  const char *p = (const char *)m->payload;
  const char *nul = m->len ? memchr(p, '\0', m->len) : NULL;
  if (nul == NULL || nul == p) return 0;
  out->nick = p;
  out->nick_len = (size_t)(nul - p);
  out->text = nul + 1;
  out->text_len = m->len - out->nick_len - 1;
  return 1;
}

static void print_msg(const qrpc_broker_msg *m, const chat_msg *cm) {
  /* The subscription is to one topic, "chat.<room>". */
  size_t skip = m->topic_len > 5 ? 5 : 0;
  putchar('[');
  put_clean(m->topic + skip, m->topic_len - skip);
  fputs("] ", stdout);
  if (cm) {
    put_clean(cm->nick, cm->nick_len);
    fputs(": ", stdout);
    put_clean(cm->text, cm->text_len);
  } else {
    printf("(a message of %zu bytes that is not nick\\0text)", m->len);
  }
  putchar('\n');
}

/* ---- The room's subscription ------------------------------------------- */

static void demo_on_message(user *u, const chat_msg *cm, int ok);
static void demo_on_subscribed(user *u);

static void on_message(qrpc_broker_sub *sub, const qrpc_broker_msg *m,
                       void *ud) {
  user *u = ud;
  (void)sub;
  chat_msg cm;
  int ok = decode(m, &cm);
  if (u->c->opt.demo) {
    demo_on_message(u, &cm, ok);
    if (u->idx == 0) print_msg(m, ok ? &cm : NULL);
    return;
  }
  print_msg(m, ok ? &cm : NULL);
}

static void on_subscribed(qrpc_broker_sub *sub, uint64_t id, void *ud) {
  user *u = ud;
  (void)sub, (void)id;
  if (u->c->opt.demo) {
    demo_on_subscribed(u);
  } else if (!u->sub_confirmed) {
    printf(PROG ": joined [%s]; type a message, /join ROOM or /quit\n",
           u->room);
  } else {
    printf(PROG ": resubscribed to [%s]\n", u->room);
  }
  u->sub_confirmed = 1;
}

static void on_end(qrpc_broker_sub *sub, int status, const char *detail,
                   void *ud) {
  user *u = ud;
  (void)sub;
  u->sub = NULL; /* freed when this returns */
  if (u->c->opt.demo) {
    fail(u->c, "%s: the broker %s the subscription to [%s]: %s: %s", u->nick,
         u->sub_confirmed ? "ended" : "refused", u->room,
         qrpc_status_name(status), detail);
    return;
  }
  const char *what = u->sub_confirmed ? "ended your subscription to"
                                      : "refused to let you join";
  printf(PROG ": the broker %s [%s]: %s: %s; /join another room\n", what,
         u->room, qrpc_status_name(status), detail);
}

static const qrpc_broker_sub_callbacks room_cbs = {
    .on_message = on_message,
    .on_subscribed = on_subscribed,
    .on_end = on_end,
};

static int join(user *u, const char *room) {
  char topic[sizeof("chat.") + ROOM_MAX];
  snprintf(topic, sizeof(topic), "chat.%s", room);
  qrpc_broker_sub *sub = NULL;
  int rc = qrpc_broker_subscribe(u->bc, topic, NULL, &room_cbs, u, &sub);
  if (rc != 0) return rc;
  qrpc_broker_unsubscribe(u->sub); /* NULL when refused before */
  u->sub = sub;
  u->sub_confirmed = 0;
  snprintf(u->room, sizeof(u->room), "%s", room);
  return 0;
}

/* ---- The connection ---------------------------------------------------- */

static void on_ready(qrpc_broker_client *bc, int status, const char *detail,
                     void *ud) {
  user *u = ud;
  chat *c = u->c;
  (void)bc;
  if (status != 0) {
    fail(c, "%s: the broker refused --token: %s: %s", u->nick,
         qrpc_status_name(status), detail ? detail : "");
    return;
  }
  if (!c->opt.demo)
    printf(PROG ": %s to %s as %s\n",
           u->connected ? "reconnected" : "connected", c->opt.connect, u->nick);
  u->connected = 1;
}

static void on_disconnect(qrpc_broker_client *bc, const qrpc_close_info *info,
                          void *ud) {
  user *u = ud;
  chat *c = u->c;
  (void)bc;
  if (c->closing) return;
  if (c->opt.demo) {
    fail(c, "%s lost its connection: %s", u->nick, close_reason(info));
    return;
  }
  printf(PROG ": disconnected from %s: %s; reconnecting\n", c->opt.connect,
         close_reason(info));
}

/* The broker user u connects to: --connect as given (a list is failover
 * for one user), or in the demo the list's entries in turn, user i on
 * entry i modulo their count, so that the users spread over the nodes of
 * a cluster. Writes it to buf (cap bytes). */
static const char *user_addr(const chat *c, const user *u, char *buf,
                             size_t cap) {
  const char *list = c->opt.connect;
  if (!c->opt.demo || !strchr(list, ',')) return list;
  size_t n = 1, i = (size_t)(u - c->users);
  for (const char *p = list; *p; p++) n += *p == ',';
  const char *p = list;
  for (size_t k = i % n; k > 0; k--) p = strchr(p, ',') + 1;
  size_t len = strcspn(p, ",");
  snprintf(buf, cap, "%.*s", (int)len, p);
  return buf;
}

static int user_start(chat *c, user *u) {
  char addr[256];
  const char *connect = user_addr(c, u, addr, sizeof(addr));
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  o.client.server_name = c->opt.servername;
  o.token = c->opt.token;
  o.client_name = u->nick;
  o.on_ready = on_ready;
  o.on_disconnect = on_disconnect;
  o.client.on_state = on_conn_state;
  o.user_data = u;
  int rc = qrpc_broker_client_new(c->loop, connect, c->tls, &o, &u->bc);
  if (rc != 0) {
    u->bc = NULL;
    fprintf(stderr, PROG ": cannot connect to --connect %s: %s%s\n", connect,
            qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    return -1;
  }
  if ((rc = join(u, c->opt.room)) != 0) {
    fprintf(stderr, PROG ": cannot subscribe to [%s]: %s\n", c->opt.room,
            qrpc_strerror(rc));
    return -1;
  }
  return 0;
}

/* ---- Typed lines ------------------------------------------------------- */

static void command(chat *c, char *line) {
  user *u = &c->users[0];
  if (strcmp(line, "/quit") == 0) {
    quit(c);
  } else if (strncmp(line, "/join", 5) == 0 &&
             (line[5] == ' ' || line[5] == '\0')) {
    char *room = line + 5;
    while (*room == ' ') room++;
    for (size_t n = strlen(room); n && room[n - 1] == ' ';) room[--n] = '\0';
    if (!room_ok(room))
      printf(PROG ": a room is 1 to %d letters, digits, '-' or '_'\n",
             ROOM_MAX);
    else if (strcmp(room, u->room) == 0 && u->sub)
      printf(PROG ": already in [%s]\n", room);
    else if (join(u, room) != 0)
      printf(PROG ": cannot join [%s]\n", room);
    else
      printf(PROG ": joining [%s]\n", room);
  } else {
    printf(PROG ": unknown command '%s': /join ROOM, /quit (start a message "
                "with // to send one beginning with /)\n",
           line);
  }
}

/* Handles one line (NUL-terminated, without its newline). */
static void on_line(chat *c, char *line, size_t len) {
  if (len && line[len - 1] == '\r') line[--len] = '\0';
  if (len == 0) return;
  if (line[0] == '/' && line[1] != '/') {
    command(c, line);
    return;
  }
  if (line[0] == '/') { /* "//text" sends "/text" */
    line++;
    len--;
  }
  int rc = send_text(&c->users[0], line, len);
  if (rc != 0) printf(PROG ": not sent: %s\n", qrpc_strerror(rc));
}

/* Splits bytes read into lines. */
static void feed(chat *c, const char *p, size_t n) {
  input *in = &c->in;
  for (size_t i = 0; i < n && !c->quitting; i++) {
    if (p[i] == '\n') {
      if (in->too_long) {
        printf(PROG ": not sent: a line may be at most %d bytes\n", TEXT_MAX);
      } else {
        in->line[in->len] = '\0';
        on_line(c, in->line, in->len);
      }
      in->len = 0;
      in->too_long = 0;
    } else if (in->len == TEXT_MAX) {
      in->too_long = 1;
    } else if (!in->too_long) {
      in->line[in->len++] = p[i];
    }
  }
}

static void on_stdin(evutil_socket_t fd, short what, void *arg) {
  chat *c = arg;
  (void)fd, (void)what;
  char buf[READ_CHUNK];
  ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
  if (n < 0 && errno == EINTR) {
    if (c->in.manual) input_resume(c);
    return;
  }
  if (n < 0) {
    fprintf(stderr, PROG ": cannot read stdin: %s\n", strerror(errno));
    quit(c);
    return;
  }
  if (n == 0) {
    feed(c, "\n", c->in.len || c->in.too_long ? 1 : 0); /* a last line */
    quit(c);
    return;
  }
  feed(c, buf, (size_t)n);
  if (c->quitting) return;
  if (in_flight(c) >= IN_FLIGHT_PAUSE)
    input_stop(c);
  else if (c->in.manual)
    input_resume(c);
}

/* Lets on_stdin run again: once fd 0 is readable, or when it is read by
 * hand, after the loop has polled its sockets once more (a timer of 0 s;
 * event_active() from inside on_stdin would run it again before any
 * packet, starving the connections while a long file is read). */
static int input_resume(chat *c) {
  static const struct timeval now = {0, 0};
  if (event_add(c->in.ev, c->in.manual ? &now : NULL) != 0) return -1;
  c->in.active = 1;
  return 0;
}

/* Whether epoll can watch fd 0: terminals, pipes and sockets; not regular
 * files or other devices (/dev/null), which are always readable anyway. */
static int stdin_pollable(void) {
  struct stat st;
  if (isatty(STDIN_FILENO)) return 1;
  if (fstat(STDIN_FILENO, &st) != 0) return 0;
  return S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
}

/* Starts reading stdin. The loop never waits on it: on_stdin reads once
 * per readiness, which returns at once. fd 0 is not made O_NONBLOCK
 * because on a terminal it usually shares its open file description with
 * stdout and stderr (and a pipe with whoever else reads it), which would
 * then turn non-blocking too. */
static int input_start(chat *c) {
  input *in = &c->in;
  struct event_base *base = qrpc_loop_base(c->loop);
  in->manual = !stdin_pollable();
  if (in->manual)
    in->ev = evtimer_new(base, on_stdin, c);
  else
    in->ev = event_new(base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, c);
  if (!in->ev) return -1;
  return input_resume(c);
}

static void input_stop(chat *c) {
  if (!c->in.ev) return;
  c->in.active = 0;
  event_del(c->in.ev);
}

static void input_free(chat *c) {
  if (c->in.ev) event_free(c->in.ev);
  c->in.ev = NULL;
}

/* ---- The demo ---------------------------------------------------------- */

static int user_of(chat *c, const chat_msg *cm) {
  for (int j = 0; j < c->n; j++)
    if (strlen(c->users[j].nick) == cm->nick_len &&
        memcmp(c->users[j].nick, cm->nick, cm->nick_len) == 0)
      return j;
  return -1;
}

/* The k of "message k of DEMO_MESSAGES", or 0. */
static unsigned seq_of(const chat_msg *cm) {
  char text[64];
  if (cm->text_len >= sizeof(text)) return 0;
  memcpy(text, cm->text, cm->text_len);
  text[cm->text_len] = '\0';
  unsigned k = 0, of = 0;
  int used = 0;
  if (sscanf(text, "message %u of %u%n", &k, &of, &used) != 2 ||
      (size_t)used != cm->text_len || of != DEMO_MESSAGES)
    return 0;
  return k;
}

static void demo_report(chat *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void demo_report(chat *c, const char *fmt, ...) {
  if (c->reported++ >= DEMO_REPORT_MAX) return;
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void demo_check_done(chat *c) {
  if (c->complete || c->in_order != (uint64_t)c->n * c->n * DEMO_MESSAGES ||
      in_flight(c) != 0)
    return;
  c->complete = 1;
  struct timeval tv = {0, DEMO_GRACE_MS * 1000};
  event_add(c->deadline, &tv); /* replaces the overall timeout */
}

static void demo_on_message(user *u, const chat_msg *cm, int ok) {
  chat *c = u->c;
  int j = ok ? user_of(c, cm) : -1;
  unsigned k = j >= 0 ? seq_of(cm) : 0;
  if (k == 0 || k > DEMO_MESSAGES) {
    u->malformed++;
    demo_report(c, "%s received a message that is not from the demo", u->nick);
  } else if (k == u->from[j] + 1) {
    u->from[j] = k;
    u->in_order++;
    c->in_order++;
    demo_check_done(c);
  } else if (k <= u->from[j]) {
    u->duplicates++;
    demo_report(c, "%s received message %u of %s again", u->nick, k,
                c->users[j].nick);
  } else {
    u->disorder++;
    demo_report(c, "%s received message %u of %s after message %u", u->nick, k,
                c->users[j].nick, u->from[j]);
  }
}

static void demo_send(chat *c) {
  printf(PROG ": %d users joined [%s] in %.0f ms; each sends %d messages; "
              "what %s sees:\n",
         c->n, c->opt.room, (double)(now_ns(c) - c->start_ns) / 1e6,
         DEMO_MESSAGES, c->users[0].nick);
  for (int k = 1; k <= DEMO_MESSAGES; k++)
    for (int i = 0; i < c->n; i++) {
      char text[64];
      int len =
          snprintf(text, sizeof(text), "message %d of %d", k, DEMO_MESSAGES);
      int rc = send_text(&c->users[i], text, (size_t)len);
      if (rc != 0) {
        fail(c, "%s cannot publish: %s", c->users[i].nick, qrpc_strerror(rc));
        return;
      }
    }
}

static void demo_send_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  demo_send(arg);
}

static void demo_on_subscribed(user *u) {
  chat *c = u->c;
  if (u->sub_confirmed) {
    fail(c, "%s was subscribed again: its connection was renewed", u->nick);
    return;
  }
  if (++c->subscribed < c->n) return;
  /* Across the nodes of a cluster a subscription reaches the other nodes
   * through NATS a little after it is confirmed here (NATS delivers at
   * most once to the interest it has): let it spread first. */
  if (strchr(c->opt.connect, ',')) {
    struct timeval settle = {0, DEMO_SETTLE_US};
    event_base_once(qrpc_loop_base(c->loop), -1, EV_TIMEOUT, demo_send_cb, c,
                    &settle);
    return;
  }
  demo_send(c);
}

/* How many users share u's broker node (all of them on one broker): a
 * publish's answer counts the subscriptions of the publisher's node. */
static int demo_node_users(const chat *c, const user *u) {
  int nodes = 1, i = (int)(u - c->users), n = 0;
  for (const char *p = c->opt.connect; *p; p++) nodes += *p == ',';
  for (int j = 0; j < c->n; j++) n += j % nodes == i % nodes;
  return n;
}

static void demo_on_published(user *u, int status, uint32_t subscribers,
                              const char *detail) {
  chat *c = u->c;
  int local = demo_node_users(c, u);
  if (status != QRPC_STATUS_OK) {
    u->ack_failed++;
    fail(c, "the broker did not take a message of %s: %s: %s", u->nick,
         qrpc_status_name(status), detail ? detail : "");
  } else if (subscribers != (uint32_t)local) {
    u->ack_short++;
    demo_report(c, "a message of %s was handed to %u subscriptions, not %d",
                u->nick, subscribers, local);
  } else {
    u->acked++;
  }
  demo_check_done(c);
}

/* Lists what each user is missing; returns how many messages that is. */
static uint64_t demo_missing(chat *c) {
  uint64_t missing = 0;
  for (int i = 0; i < c->n; i++)
    for (int j = 0; j < c->n; j++) {
      const user *u = &c->users[i];
      if (u->from[j] == DEMO_MESSAGES) continue;
      missing += DEMO_MESSAGES - u->from[j];
      demo_report(c, "%s is missing messages %u..%d of %s", u->nick,
                  u->from[j] + 1, DEMO_MESSAGES, c->users[j].nick);
    }
  return missing;
}

/* Prints the outcome; returns 0 if every check passed. */
static int demo_summary(chat *c) {
  uint64_t dup = 0, disorder = 0, malformed = 0;
  uint32_t acked = 0, refused = 0;
  for (int i = 0; i < c->n; i++) {
    const user *u = &c->users[i];
    dup += u->duplicates;
    disorder += u->disorder;
    malformed += u->malformed;
    acked += u->acked;
    refused += u->ack_failed + u->ack_short;
  }
  uint64_t missing = c->subscribed == c->n ? demo_missing(c) : 0;
  if (c->reported > DEMO_REPORT_MAX)
    fprintf(stderr, PROG ": (%d more problems not shown)\n",
            c->reported - DEMO_REPORT_MAX);
  uint64_t expected = (uint64_t)c->n * c->n * DEMO_MESSAGES;
  printf(PROG ": %d users, %d messages each: %llu of %llu deliveries in "
              "order, %llu missing, %llu duplicated, %llu out of order, %llu "
              "foreign; %u of %d publishes acknowledged to every "
              "subscription of the publisher's broker\n",
         c->n, DEMO_MESSAGES, (unsigned long long)c->in_order,
         (unsigned long long)expected, (unsigned long long)missing,
         (unsigned long long)dup, (unsigned long long)disorder,
         (unsigned long long)malformed, acked, c->n * DEMO_MESSAGES);
  return c->status == 0 && c->in_order == expected && dup == 0 &&
                 disorder == 0 && malformed == 0 && refused == 0 &&
                 acked == (uint32_t)(c->n * DEMO_MESSAGES)
             ? 0
             : -1;
}

/* ---- Timers and signals ------------------------------------------------ */

/* Interactive: /quit waited long enough. Demo: the grace period is over,
 * or the time is up. */
static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  chat *c = arg;
  (void)fd, (void)what;
  if (c->opt.demo) {
    if (!c->complete) {
      const char *why = c->last_failure[0] ? c->last_failure
                                           : "is qrpc-broker running there?";
      if (c->subscribed < c->n)
        fail(c, "only %d of %d users joined [%s] at %s within %d s (%s)",
             c->subscribed, c->n, c->opt.room, c->opt.connect,
             DEMO_TIMEOUT_MS / 1000, why);
      else
        fail(c, "not every message arrived within %d s",
             DEMO_TIMEOUT_MS / 1000);
    }
    qrpc_loop_stop(c->loop);
    return;
  }
  size_t n = in_flight(c);
  printf(PROG ": leaving with %zu message%s not answered by the broker\n", n,
         n == 1 ? "" : "s");
  qrpc_loop_stop(c->loop);
}

static void on_notice(evutil_socket_t fd, short what, void *arg) {
  chat *c = arg;
  (void)fd, (void)what;
  if (c->users[0].connected) return;
  const char *why = c->last_failure[0] ? c->last_failure
                                       : "no answer; is qrpc-broker running "
                                         "there?";
  printf(PROG ": not connected to %s after %d s: %s; still trying (/quit to "
              "give up)\n",
         c->opt.connect, CONNECT_NOTICE_MS / 1000, why);
}

static void on_signal(evutil_socket_t sig, short events, void *arg) {
  chat *c = arg;
  (void)sig, (void)events;
  if (c->opt.demo)
    fail(c, "interrupted");
  else if (c->quitting)
    qrpc_loop_stop(c->loop); /* a second signal: leave now */
  else
    quit(c);
}

static int start_events(chat *c) {
  struct event_base *base = qrpc_loop_base(c->loop);
  c->deadline = evtimer_new(base, on_deadline, c);
  c->notice = evtimer_new(base, on_notice, c);
  c->sigterm = evsignal_new(base, SIGTERM, on_signal, c);
  c->sigint = evsignal_new(base, SIGINT, on_signal, c);
  if (!c->deadline || !c->notice || !c->sigterm || !c->sigint ||
      event_add(c->sigterm, NULL) != 0 || event_add(c->sigint, NULL) != 0)
    return -1;
  if (c->opt.demo) {
    struct timeval tv = {DEMO_TIMEOUT_MS / 1000, 0};
    return event_add(c->deadline, &tv);
  }
  struct timeval tv = {CONNECT_NOTICE_MS / 1000, 0};
  if (event_add(c->notice, &tv) != 0) return -1;
  return input_start(c);
}

static void free_event(struct event *ev) {
  if (ev != NULL) event_free(ev);
}

/* ---- Main -------------------------------------------------------------- */

static int users_new(chat *c) {
  c->n = c->opt.demo ? (int)c->opt.demo : 1;
  c->users = calloc((size_t)c->n, sizeof(*c->users));
  if (!c->users) return -1;
  for (int i = 0; i < c->n; i++) {
    user *u = &c->users[i];
    u->c = c;
    u->idx = i;
    if (c->opt.demo) {
      snprintf(u->nick, sizeof(u->nick), "user%d", i + 1);
      if (!(u->from = calloc((size_t)c->n, sizeof(*u->from)))) return -1;
    } else {
      snprintf(u->nick, sizeof(u->nick), "%s", c->opt.name);
    }
  }
  return 0;
}

static void users_free(chat *c) {
  c->closing = 1;
  for (int i = 0; c->users && i < c->n; i++) {
    qrpc_broker_client_free(c->users[i].bc); /* frees the subscription */
    free(c->users[i].from);
  }
  free(c->users);
  c->users = NULL;
}

/* Sets up everything and runs the loop; returns the exit status. */
static int run(chat *c) {
  int rc;
  if ((rc = qrpc_tls_config_new(&c->tls)) != 0 ||
      (rc = qrpc_tls_config_set_ca_file(c->tls, c->opt.ca)) != 0) {
    fprintf(stderr,
            PROG ": cannot load --ca %s: %s (make certs creates the default "
                 "one)\n",
            c->opt.ca, qrpc_strerror(rc));
    return 1;
  }
  if (c->opt.cert && (rc = qrpc_tls_config_set_cert_files(c->tls, c->opt.cert,
                                                          c->opt.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n",
            c->opt.cert, c->opt.key, qrpc_strerror(rc));
    return 1;
  }
  if (users_new(c) != 0) {
    fprintf(stderr, PROG ": out of memory\n");
    return 1;
  }
  if (!c->opt.demo)
    printf(PROG ": connecting to %s as %s\n", c->opt.connect, c->opt.name);
  for (int i = 0; i < c->n; i++)
    if (user_start(c, &c->users[i]) != 0) return 1;
  if (start_events(c) != 0) {
    fprintf(stderr, PROG ": cannot watch stdin, signals and timers\n");
    return 1;
  }
  if ((rc = qrpc_loop_run(c->loop)) != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if (c->opt.demo) return demo_summary(c) == 0 ? 0 : 1;
  return c->status;
}

int main(int argc, char **argv) {
  chat *c = &C;
  int rc = parse_args(argc, argv, &c->opt);
  if (rc != 0) return rc > 0 ? 0 : 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(on_log, c);
  qrpc_log_set_level(c->opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_INFO);
  if ((rc = qrpc_loop_new(NULL, &c->loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  c->start_ns = now_ns(c);
  int status = run(c);
  users_free(c);
  input_free(c);
  free_event(c->deadline);
  free_event(c->notice);
  free_event(c->sigterm);
  free_event(c->sigint);
  qrpc_tls_config_free(c->tls);
  /* Let the closes reach the broker before the process goes. */
  qrpc_loop_run_for(c->loop, 100);
  qrpc_loop_free(c->loop);
  return status;
}
