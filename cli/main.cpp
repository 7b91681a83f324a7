// spattn: the command-line front end (DESIGN.md §7, §8).
#include "cli/cli.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include <fmt/format.h>

#include "common/text.hpp"

namespace spattn::cli {

Globals& globals() {
  static Globals g;
  return g;
}

std::string read_input_file(const std::string& path, const std::string& what, std::size_t max_bytes) {
  const std::string shown = detail::printable(path);
  int fd = STDIN_FILENO;
  if (path != "-") {
    // stat first: a directory or socket is refused before anything is opened, and a
    // FIFO is only opened (and waited on) when it is what the user named.
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      throw UsageError(fmt::format("{}: cannot read '{}': {}", what, shown, std::strerror(errno)));
    }
    if (S_ISDIR(st.st_mode)) throw UsageError(fmt::format("{}: '{}' is a directory, not a file", what, shown));
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) {
      throw UsageError(fmt::format("{}: '{}' is not a file that can be read (a socket or block device)", what, shown));
    }
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw UsageError(fmt::format("{}: cannot read '{}': {}", what, shown, std::strerror(errno)));
  }
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      if (fd != STDIN_FILENO) ::close(fd);
      throw UsageError(fmt::format("{}: cannot read '{}': {}", what, shown, std::strerror(err)));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > max_bytes) {
      if (fd != STDIN_FILENO) ::close(fd);
      throw UsageError(fmt::format("{}: '{}' is larger than {}; that is not a {} file", what, shown,
                                   detail::human_bytes(max_bytes), what));
    }
  }
  if (fd != STDIN_FILENO) ::close(fd);
  return text;
}

Pattern load_pattern_arg(const std::string& arg) {
  if (!arg.empty() && arg[0] == '@') return Pattern::parse(read_input_file(arg.substr(1), "--pattern"));
  return Pattern::parse(arg);
}

void print_json(const nlohmann::json& value) { std::cout << value.dump(2) << std::endl; }

Progress::Progress(std::string label, size_t total)
    : label_(std::move(label)), total_(total),
      enabled_(!globals().quiet && !globals().json && total > 0) {
  draw();
}

void Progress::advance(size_t n) {
  done_ += n;
  draw();
}

void Progress::draw() {
  if (!enabled_) return;
  constexpr int kWidth = 30;
  const int filled = total_ ? static_cast<int>(kWidth * done_ / total_) : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, ' ');
  // On a terminal the line is redrawn in place; in a log every step is its own line.
  const bool tty = isatty(fileno(stderr));
  std::fprintf(stderr, "%s%s [%s] %zu/%zu%s", tty ? "\r" : "", label_.c_str(), bar.c_str(), done_,
               total_, tty ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && isatty(fileno(stderr))) std::fputc('\n', stderr);
}

Progress::~Progress() { finish(); }

namespace {

int exit_code_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kUnsupported: return 2;
    case ErrorCode::kNoGpu: return 3;
    default: return 1;
  }
}

// One line: the reason for bad input never spans lines (control characters that came
// with the input are escaped). Runtime failures may carry an NVRTC log below the line.
void report(const std::string& message, bool one_line) {
  std::cerr << "spattn: error: " << (one_line ? detail::printable(message, 4000) : message) << std::endl;
}

// Every command and subcommand gets --json and -q/--quiet, so both placements work
// (`spattn --json cache ls`, `spattn cache ls --json`) for all of them.
void add_global_flags(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->get_option_no_throw("--json") == nullptr) {
      sub->add_flag("--json", globals().json, "machine-readable JSON output on stdout");
    }
    if (sub->get_option_no_throw("--quiet") == nullptr && sub->get_option_no_throw("-q") == nullptr) {
      sub->add_flag("-q,--quiet", globals().quiet, "no progress output");
    }
    add_global_flags(*sub);
  }
}

// The command path "spattn cache" of an app, for messages.
std::string command_path(const CLI::App* app) {
  std::string path;
  for (; app != nullptr; app = app->get_parent()) {
    path = app->get_parent() == nullptr ? "spattn" + path : " " + app->get_name() + path;
  }
  return path;
}

// Names an unknown (sub)command at any level, instead of CLI11's "A subcommand is
// required". Returns the message, or "" when argv names known commands.
std::string unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* current = &app;
  for (int k = 1; k < argc; ++k) {
    const std::string token = argv[k];
    if (token == "--") break;
    if (token.size() > 1 && token[0] == '-') {
      // An option: skip its value when it takes one (and it is not given as --opt=value).
      if (token.find('=') != std::string::npos) continue;
      const CLI::Option* opt = nullptr;
      for (const CLI::App* a = current; a != nullptr && opt == nullptr; a = a->get_parent()) {
        opt = a->get_option_no_throw(token);
      }
      if (opt != nullptr && opt->get_items_expected_min() > 0) ++k;
      continue;
    }
    const auto subs = current->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) break;  // a positional argument of a leaf command
    CLI::App* next = nullptr;
    std::string names;
    for (CLI::App* sub : subs) {
      if (sub->check_name(token)) next = sub;
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (next != nullptr) {
      current = next;
      continue;
    }
    if (current->get_require_subcommand_min() == 0) break;
    return fmt::format("unknown command '{}' for '{}'; commands: {}", detail::printable(token, 60),
                       command_path(current), names);
  }
  return {};
}

}  // namespace
}  // namespace spattn::cli

int main(int argc, char** argv) {
  using namespace spattn::cli;
  CLI::App app{"spattn: JIT sparse-attention kernel generator, kernel cache and autotuner"};
  app.require_subcommand(1);
  app.add_flag("--json", globals().json, "machine-readable JSON output on stdout");
  app.add_flag("-q,--quiet", globals().quiet, "no progress output");
  app.set_version_flag("--version", std::string("spattn ") + SPATTN_VERSION_STRING);

  register_info(app);
  register_pattern(app);
  register_cache(app);
  register_compile(app);
  register_demo(app);
  register_autotune(app);
  register_prewarm(app);
  register_bench(app);
  register_bundle(app);
  register_ring(app);
  add_global_flags(app);

  if (const std::string unknown = unknown_command(app, argc, argv); !unknown.empty()) {
    report(unknown, true);
    std::cerr << "run 'spattn --help' for usage" << std::endl;
    return 2;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    report(e.what(), true);
    std::cerr << "run 'spattn --help' for usage" << std::endl;
    return 2;
  } catch (const spattn::Error& e) {
    const int code = exit_code_for(e.code());
    report(e.what(), code != 1);
    return code;
  } catch (const std::exception& e) {
    report(e.what(), false);
    return 1;
  }
  return 0;
}
