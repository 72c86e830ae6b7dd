return require "svc._service" ("stocks", 0.8, { MOON = 42.0 })
