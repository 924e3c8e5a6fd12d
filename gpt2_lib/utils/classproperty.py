"""A read-only property on the class (e.g. `GPT2Backbone.presets`)."""


class classproperty(property):
    def __get__(self, _, owner_cls):
        return self.fget(owner_cls)
