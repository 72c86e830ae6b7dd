return require "svc._service" ("news", 0.1, { "moonring 0.1 answers on time" })
