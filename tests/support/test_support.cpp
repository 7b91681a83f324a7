#include "tests/support/test_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <random>
#include <sstream>

namespace spattn::test {

namespace fs = std::filesystem;

TempDir::TempDir(const std::string& tag) {
  const char* root = std::getenv("SPATTN_TEST_TMP");
  fs::path base = root && *root ? fs::path(root) : fs::temp_directory_path();
  fs::create_directories(base);
  static std::atomic<int> counter{0};
  std::random_device rd;
  for (int attempt = 0;; ++attempt) {
    fs::path p = base / (tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + "-" +
                         std::to_string(rd() % 100000));
    if (fs::create_directory(p)) {
      path_ = p;
      return;
    }
  }
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

ScopedEnv::ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
  if (const char* old = std::getenv(name)) old_ = old;
  if (value) setenv(name, value->c_str(), 1);
  else unsetenv(name);
}

ScopedEnv::~ScopedEnv() {
  if (old_) setenv(name_.c_str(), old_->c_str(), 1);
  else unsetenv(name_.c_str());
}

std::string cli_path() {
  const char* p = std::getenv("SPATTN_CLI");
  return p && *p ? p : SPATTN_CLI_PATH;
}

CommandResult run_command(const std::string& command) {
  TempDir dir("cmd");
  const fs::path out = dir.path() / "out", err = dir.path() / "err";
  const std::string full = command + " >" + out.string() + " 2>" + err.string();
  CommandResult r;
  const int raw = std::system(full.c_str());
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace spattn::test
